// A child for the "exit seen" benchmark: prints its own CLOCK_MONOTONIC time
// in nanoseconds on stdout, then exits 0 at once. The one who waits for it
// subtracts that from the moment it learnt of the exit.
#include <time.h>
#include <unistd.h>

#include <cstdio>

int main() {
  struct timespec ts {};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  char line[32];
  int n = std::snprintf(line, sizeof line, "%lld\n", static_cast<long long>(ts.tv_sec) * 1000000000LL + ts.tv_nsec);
  ssize_t ignored = ::write(STDOUT_FILENO, line, static_cast<size_t>(n));
  (void)ignored;
  ::_exit(0);
}
