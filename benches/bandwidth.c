// Memory read bandwidth with N threads (default 2): each thread sums its own 512 MiB slice
// (far larger than any L3 here), best of 5 passes. What decode of a model larger than the
// last-level cache can read per second: the roofline the K-quant benchmark compares to.
// Hand-written because Debian's probes measure one thread (mbw) or use scalar loops (sysbench).
//   gcc -O3 -march=native -fopenmp benches/bandwidth.c -o bandwidth && ./bandwidth [THREADS]
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
  int threads = argc > 1 ? atoi(argv[1]) : 2;
  size_t per = (size_t)512 << 20, n = per / sizeof(uint64_t) * threads;
  uint64_t *a = aligned_alloc(64, n * sizeof(uint64_t));
  if (!a) return 1;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (size_t i = 0; i < n; i++) a[i] = i;  // first touch by the thread that reads it
  double best = 1e30;
  uint64_t sink = 0;
  for (int pass = 0; pass < 5; pass++) {
    double t0 = omp_get_wtime();
#pragma omp parallel for num_threads(threads) schedule(static) reduction(^ : sink)
    for (size_t i = 0; i < n; i++) sink ^= a[i];
    double t = omp_get_wtime() - t0;
    if (t < best) best = t;
  }
  printf("%.1f GB/s read with %d threads (checksum %llu)\n", n * sizeof(uint64_t) / best / 1e9,
         threads, (unsigned long long)(sink & 1));
  return 0;
}
