# Compiler cache for every language when ccache is installed (rebuilds on a 2-core machine).
find_program(ATTN_CCACHE ccache)
if(ATTN_CCACHE)
  foreach(lang C CXX CUDA)
    if(NOT DEFINED CMAKE_${lang}_COMPILER_LAUNCHER)
      set(CMAKE_${lang}_COMPILER_LAUNCHER ${ATTN_CCACHE})
    endif()
  endforeach()
endif()
