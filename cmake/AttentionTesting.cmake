# attn_add_test(<name> COMMAND <cmd...> LABELS <labels...> [TIMEOUT <s>] [WORKING_DIRECTORY <dir>])
#
# Registers a ctest test with the project's conventions: labels from {cpu, gpu, integration,
# slow}, and exit code 77 meaning SKIP (a GPU test without a GPU, an integration test whose
# external program is missing), so that nothing passes vacuously.
set(ATTN_SKIP_RETURN_CODE 77)
function(attn_add_test name)
  cmake_parse_arguments(ARG "" "TIMEOUT;WORKING_DIRECTORY" "COMMAND;LABELS;ENVIRONMENT" ${ARGN})
  if(NOT ARG_LABELS)
    message(FATAL_ERROR "attn_add_test(${name}): LABELS is required")
  endif()
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT 300)
  endif()
  if(NOT ARG_WORKING_DIRECTORY)
    set(ARG_WORKING_DIRECTORY ${CMAKE_CURRENT_BINARY_DIR})
  endif()
  add_test(NAME ${name} COMMAND ${ARG_COMMAND} WORKING_DIRECTORY ${ARG_WORKING_DIRECTORY})
  set_tests_properties(${name} PROPERTIES
    LABELS "${ARG_LABELS}" TIMEOUT ${ARG_TIMEOUT} SKIP_RETURN_CODE ${ATTN_SKIP_RETURN_CODE})
  if(ARG_ENVIRONMENT)
    set_tests_properties(${name} PROPERTIES ENVIRONMENT "${ARG_ENVIRONMENT}")
  endif()
endfunction()

# attn_add_gtest(<target> SOURCES <...> LIBS <...> LABELS <...> [TIMEOUT <s>])
# One gtest executable registered as one ctest test named after the target.
function(attn_add_gtest target)
  cmake_parse_arguments(ARG "" "TIMEOUT" "SOURCES;LIBS;LABELS" ${ARGN})
  add_executable(${target} ${ARG_SOURCES})
  target_link_libraries(${target} PRIVATE ${ARG_LIBS} GTest::gtest GTest::gmock)
  attn_target_warnings(${target})
  set(timeout_args)
  if(ARG_TIMEOUT)
    set(timeout_args TIMEOUT ${ARG_TIMEOUT})
  endif()
  attn_add_test(${target} COMMAND $<TARGET_FILE:${target}> LABELS ${ARG_LABELS} ${timeout_args})
endfunction()
