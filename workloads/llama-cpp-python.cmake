# How llama-cpp-python 0.3.36 is compiled for Archipelag (`make llama-wheel`; the llm-chat image vendors the same
# wheel): only the libraries its Python bindings load, libllama and libggml*, for a CPU without AMX.
#
# CMake reads this file twice. First as the initial cache (`CMAKE_ARGS="-C <this file>"`), where it sets the
# options below. Then again right after llama.cpp's own project() call (CMAKE_PROJECT_llama.cpp_INCLUDE), to turn
# off llama.cpp's common library: llama-cpp-python's CMakeLists forces it on, yet nothing the bindings load links
# it. Without common (and its HTTP client) and mtmd the build has 83 steps instead of 193, and takes ~7 CPU-minutes
# here instead of ~18. There it also compiles libllama at -O1 (below).
#
# The wheel cache is keyed by this file's SHA-256 (Makefile, workloads/build_containers.py): any edit here builds
# a new wheel instead of reusing one compiled with other flags.
if(NOT PROJECT_NAME STREQUAL "llama.cpp")
  # DESIGN §9: the default native build uses AMX here and crashes on every quantized model.
  set(GGML_NATIVE OFF CACHE BOOL "")
  set(GGML_AVX ON CACHE BOOL "")
  set(GGML_AVX2 ON CACHE BOOL "")
  set(GGML_FMA ON CACHE BOOL "")
  set(GGML_F16C ON CACHE BOOL "")
  set(GGML_BMI2 ON CACHE BOOL "")
  # Multimodal (mtmd, the old llava): the bindings load it only for image chat handlers, which no workload uses.
  set(LLAVA_BUILD OFF CACHE BOOL "")
  # Off already when llama.cpp is built as a subproject; said here so that no upstream default turns them on.
  set(LLAMA_BUILD_TESTS OFF CACHE BOOL "")
  set(LLAMA_BUILD_TOOLS OFF CACHE BOOL "")
  set(LLAMA_BUILD_EXAMPLES OFF CACHE BOOL "")
  set(LLAMA_BUILD_SERVER OFF CACHE BOOL "")
  set(LLAMA_BUILD_APP OFF CACHE BOOL "")
  set(LLAMA_CURL OFF CACHE BOOL "")
  set(LLAMA_OPENSSL OFF CACHE BOOL "")
  set(CMAKE_PROJECT_llama.cpp_INCLUDE "${CMAKE_CURRENT_LIST_FILE}" CACHE FILEPATH "")
else()
  set(LLAMA_BUILD_COMMON OFF CACHE BOOL "" FORCE)
  # libllama (model loading, tokenizer, samplers, the graph each step builds) at -O1 instead of -O3; the kernels,
  # libggml*, stay at -O3. libllama is two thirds of the compile, and -O1 takes a third off it (70 CPU-s against
  # 106 here); it holds 1.3-1.4 % of a decode step's time either way (`perf`, README "Tests"). Deferred to the end
  # of llama.cpp's directory, once its src/ has made the target; GCC takes the last -O it is given.
  cmake_language(DEFER CALL set_property TARGET llama APPEND PROPERTY COMPILE_OPTIONS -O1)
endif()
