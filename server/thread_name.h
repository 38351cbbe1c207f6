// Names the calling thread, as `top -H`, /proc/<pid>/task/*/comm and a debugger show it: the
// serving benchmark reads each thread's CPU time by these names (bench/serving/thread_cpu.py).
#ifndef ATTENTION_SERVER_THREAD_NAME_H_
#define ATTENTION_SERVER_THREAD_NAME_H_

#include <pthread.h>

namespace attention::server {

// Linux keeps at most 15 characters; longer names are cut.
inline void NameThisThread(const char* name) {
  char cut[16] = {};
  for (int i = 0; i < 15 && name[i] != '\0'; ++i) cut[i] = name[i];
  pthread_setname_np(pthread_self(), cut);
}

}  // namespace attention::server

#endif  // ATTENTION_SERVER_THREAD_NAME_H_
