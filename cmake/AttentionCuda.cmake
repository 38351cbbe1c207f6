# Decides whether the CUDA backend is built (ATTN_CUDA = AUTO | ON | OFF) and sets
# ATTN_HAVE_CUDA accordingly. A build without CUDA still produces a working CPU-only server.
include(CheckLanguage)
set(ATTN_HAVE_CUDA OFF)
string(TOUPPER "${ATTN_CUDA}" _attn_cuda_mode)
if(NOT _attn_cuda_mode STREQUAL "OFF")
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    enable_language(CUDA)
    find_package(CUDAToolkit REQUIRED)
    set(CMAKE_CUDA_STANDARD 17)
    set(CMAKE_CUDA_STANDARD_REQUIRED ON)
    set(ATTN_HAVE_CUDA ON)
  elseif(_attn_cuda_mode STREQUAL "ON")
    message(FATAL_ERROR "ATTN_CUDA=ON but no CUDA compiler was found (set CMAKE_CUDA_COMPILER)")
  endif()
endif()
message(STATUS "attention: CUDA backend ${ATTN_HAVE_CUDA} (ATTN_CUDA=${ATTN_CUDA}, "
               "architectures ${CMAKE_CUDA_ARCHITECTURES})")
