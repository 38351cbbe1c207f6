# attn_target_warnings(<target>): -Wall -Wextra on the target's own C++ sources (CUDA sources get
# the host-compiler equivalents), errors when ATTN_WERROR is on. Generated code (protobuf) does not
# call this.
function(attn_target_warnings target)
  set(cxx_flags -Wall -Wextra)
  set(cuda_flags -Xcompiler=-Wall,-Wextra)
  if(ATTN_WERROR)
    list(APPEND cxx_flags -Werror)
    list(APPEND cuda_flags -Werror=all-warnings -Xcompiler=-Werror)
  endif()
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:${cxx_flags}>
    $<$<COMPILE_LANGUAGE:CUDA>:${cuda_flags}>)
endfunction()
