// Multiply-add peak of this CPU per thread and with N threads (default 2), for the instructions
// the CPU kernels are made of: the compute roofline of the prompt and batched-decode kernels,
// as benches/bandwidth.c is the memory one of single-stream decode. Each is issued in 12
// independent chains (more than latency × throughput), so what it prints is the issue rate:
//   vpmaddubsw  u8 × i8 pairs into i16 (the AVX2 Q4/Q5/Q6/K kernels), 32 MACs an instruction
//   vpmaddwd    i16 × i16 pairs into i32 (their scale step), 16 MACs
//   vfmadd231ps f32 FMA (the F16 weight kernels after vcvtph2ps), 8 MACs
// The loops are inline assembly: from intrinsics the compiler kept the chains in memory.
// Hand-written: no Debian package measures one instruction's throughput.
//   gcc -O2 -fopenmp benches/compute-peak.c -o peak && ./peak [THREADS]
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

#define ITERS 50000000L
#define TWELVE(op)                                                                            \
  op " %%ymm0, %%ymm1, %%ymm1\n\t" op " %%ymm0, %%ymm2, %%ymm2\n\t" op                        \
     " %%ymm0, %%ymm3, %%ymm3\n\t" op " %%ymm0, %%ymm4, %%ymm4\n\t" op                        \
     " %%ymm0, %%ymm5, %%ymm5\n\t" op " %%ymm0, %%ymm6, %%ymm6\n\t" op                        \
     " %%ymm0, %%ymm7, %%ymm7\n\t" op " %%ymm0, %%ymm8, %%ymm8\n\t" op                        \
     " %%ymm0, %%ymm9, %%ymm9\n\t" op " %%ymm0, %%ymm10, %%ymm10\n\t" op                      \
     " %%ymm0, %%ymm11, %%ymm11\n\t" op " %%ymm0, %%ymm12, %%ymm12\n\t"
#define LOOP(op)                                                                              \
  __asm__ volatile("vpxor %%ymm0, %%ymm0, %%ymm0\n\t"                                          \
                   "1:\n\t" TWELVE(op) "dec %0\n\t"                                           \
                   "jnz 1b\n\t"                                                               \
                   : "+r"(n)                                                                  \
                   :                                                                          \
                   : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8",   \
                     "xmm9", "xmm10", "xmm11", "xmm12", "cc")

// GMAC/s of `macs` multiply-adds an instruction.
static double rate(int which) {
  long n = ITERS;
  double t = omp_get_wtime();
  if (which == 0) LOOP("vpmaddubsw");
  else if (which == 1) LOOP("vpmaddwd");
  else LOOP("vfmadd231ps");
  t = omp_get_wtime() - t;
  static const double macs[] = {32, 16, 8};
  return ITERS * 12 * macs[which] / t / 1e9;
}

int main(int argc, char **argv) {
  int threads = argc > 1 ? atoi(argv[1]) : 2;
  static const char *names[] = {"vpmaddubsw", "vpmaddwd", "vfmadd231ps"};
  for (int w = 0; w < 3; w++) {
    double one = rate(w), all = 0;
#pragma omp parallel num_threads(threads) reduction(+ : all)
    all += rate(w);
    printf("%-12s %6.1f GMAC/s one thread, %6.1f with %d threads\n", names[w], one, all, threads);
  }
  return 0;
}
