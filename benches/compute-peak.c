// Multiply-add peak of this CPU per thread and with N threads (default 2), for the instructions
// the CPU kernels are made of: the compute roofline of the prompt and batched-decode kernels,
// as benches/bandwidth.c is the memory one of single-stream decode. Each is issued in 12
// independent chains (more than latency × throughput), so what it prints is the issue rate:
//   vpmaddubsw  u8 × i8 pairs into i16 (the AVX2 Q4/Q5/Q6/K kernels), 32 MACs an instruction
//   vpmaddwd    i16 × i16 pairs into i32 (their scale step), 16 MACs
//   vfmadd231ps f32 FMA (the F16 weight kernels after vcvtph2ps), 8 MACs
// and, where the CPU has them: vpdpbusd (u8 × i8 quads into i32, the VNNI kernels) on ymm
// (AVX-VNNI) and zmm (AVX-512 VNNI), the zmm forms of the first three (AVX-512), and AMX's
// tdpbusd (a 16×64 by 64×16 tile product, 16 384 MACs; the K formats' prompt kernels), and
// the time of one AMX tile load (tileloadd, 1 KiB from L1): those kernels load about one tile
// per product, so on a machine where the load takes longer than the product it is their bound.
// The loops are inline assembly: from intrinsics the compiler kept the chains in memory.
// Hand-written: no Debian package measures one instruction's throughput.
//   gcc -O2 -fopenmp benches/compute-peak.c -o peak && ./peak [THREADS]
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

#define ITERS 50000000L
#define TWELVE(op, R)                                                                         \
  op " %%" R "0, %%" R "1, %%" R "1\n\t" op " %%" R "0, %%" R "2, %%" R "2\n\t"              \
  op " %%" R "0, %%" R "3, %%" R "3\n\t" op " %%" R "0, %%" R "4, %%" R "4\n\t"              \
  op " %%" R "0, %%" R "5, %%" R "5\n\t" op " %%" R "0, %%" R "6, %%" R "6\n\t"              \
  op " %%" R "0, %%" R "7, %%" R "7\n\t" op " %%" R "0, %%" R "8, %%" R "8\n\t"              \
  op " %%" R "0, %%" R "9, %%" R "9\n\t" op " %%" R "0, %%" R "10, %%" R "10\n\t"            \
  op " %%" R "0, %%" R "11, %%" R "11\n\t" op " %%" R "0, %%" R "12, %%" R "12\n\t"
#define LOOP(op, R)                                                                           \
  __asm__ volatile("vpxor %%xmm0, %%xmm0, %%xmm0\n\t"                                          \
                   "1:\n\t" TWELVE(op, R) "dec %0\n\t"                                        \
                   "jnz 1b\n\t"                                                               \
                   : "+r"(n)                                                                  \
                   :                                                                          \
                   : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8",   \
                     "xmm9", "xmm10", "xmm11", "xmm12", "cc")

struct kind {
  const char *name;
  double macs;   // per instruction
  const char *needs; // the CPU feature it needs ("": AVX2, which every machine here has)
};
static const struct kind KINDS[] = {
    {"vpmaddubsw", 32, ""},          {"vpmaddwd", 16, ""},
    {"vfmadd231ps", 8, ""},          {"vpdpbusd", 32, "avxvnni"},
    {"vpmaddubsw z", 64, "avx512bw"}, {"vfmadd231ps z", 16, "avx512f"},
    {"vpdpbusd z", 64, "avx512vnni"}, {"tdpbusd", 16384, "amx-int8"},
};
#define NKINDS (int)(sizeof KINDS / sizeof KINDS[0])

// AMX: the kernel grants a process the tile state only when asked (Linux 5.16+).
static int amx_ready(void) {
  uint64_t bits = 0;
  if (syscall(SYS_arch_prctl, 0x1021 /* ARCH_GET_XCOMP_SUPP */, &bits) || !(bits & (1 << 18)))
    return 0;
  return syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18) == 0;
}

// Four independent tile products C_i += A · B (16 rows × 64 bytes each), per iteration.
static void amx_loop(long n) {
  unsigned char cfg[64];
  memset(cfg, 0, sizeof cfg);
  cfg[0] = 1; // palette 1
  for (int t = 0; t < 6; t++) {
    cfg[16 + 2 * t] = 64; // bytes per row
    cfg[48 + t] = 16;     // rows
  }
  __asm__ volatile("ldtilecfg (%1)\n\t"
                   "tilezero %%tmm0\n\ttilezero %%tmm1\n\ttilezero %%tmm2\n\t"
                   "tilezero %%tmm3\n\ttilezero %%tmm4\n\ttilezero %%tmm5\n\t"
                   "1:\n\t"
                   "tdpbusd %%tmm5, %%tmm4, %%tmm0\n\t"
                   "tdpbusd %%tmm5, %%tmm4, %%tmm1\n\t"
                   "tdpbusd %%tmm5, %%tmm4, %%tmm2\n\t"
                   "tdpbusd %%tmm5, %%tmm4, %%tmm3\n\t"
                   "dec %0\n\tjnz 1b\n\t"
                   "tilerelease\n\t"
                   : "+r"(n)
                   : "r"(cfg)
                   : "cc", "memory");
}

// Nanoseconds per tile load: four 1 KiB tiles from a 4 KiB buffer (in L1) into tmm0–3, over
// and over.
static double tile_load_ns(void) {
  unsigned char cfg[64], buf[4096] __attribute__((aligned(64)));
  memset(cfg, 0, sizeof cfg);
  memset(buf, 1, sizeof buf);
  cfg[0] = 1;
  for (int t = 0; t < 4; t++) {
    cfg[16 + 2 * t] = 64;
    cfg[48 + t] = 16;
  }
  long n = ITERS / 16;
  long stride = 64;
  double t = omp_get_wtime();
  __asm__ volatile("ldtilecfg (%1)\n\t"
                   "1:\n\t"
                   "tileloadd (%2,%3,1), %%tmm0\n\t"
                   "tileloadd 1024(%2,%3,1), %%tmm1\n\t"
                   "tileloadd 2048(%2,%3,1), %%tmm2\n\t"
                   "tileloadd 3072(%2,%3,1), %%tmm3\n\t"
                   "dec %0\n\tjnz 1b\n\t"
                   "tilerelease\n\t"
                   : "+r"(n)
                   : "r"(cfg), "r"(buf), "r"(stride)
                   : "cc", "memory");
  return (omp_get_wtime() - t) / (ITERS / 16 * 4.0) * 1e9;
}

// GMAC/s of kind `which`.
static double rate(int which) {
  long n = ITERS;
  double t = omp_get_wtime();
  switch (which) {
  case 0: LOOP("vpmaddubsw", "ymm"); break;
  case 1: LOOP("vpmaddwd", "ymm"); break;
  case 2: LOOP("vfmadd231ps", "ymm"); break;
  case 3: LOOP("%{vex%} vpdpbusd", "ymm"); break;
  case 4: LOOP("vpmaddubsw", "zmm"); break;
  case 5: LOOP("vfmadd231ps", "zmm"); break;
  case 6: LOOP("vpdpbusd", "zmm"); break;
  default:
    n = ITERS / 16;
    amx_loop(n);
    t = omp_get_wtime() - t;
    return (double)n * 4 * KINDS[which].macs / t / 1e9;
  }
  t = omp_get_wtime() - t;
  return ITERS * 12 * KINDS[which].macs / t / 1e9;
}

int main(int argc, char **argv) {
  int threads = argc > 1 ? atoi(argv[1]) : 2;
  for (int w = 0; w < NKINDS; w++) {
    const char *f = KINDS[w].needs;
    int ok = !*f || (!strcmp(f, "avxvnni") && __builtin_cpu_supports("avxvnni")) ||
             (!strcmp(f, "avx512bw") && __builtin_cpu_supports("avx512bw")) ||
             (!strcmp(f, "avx512f") && __builtin_cpu_supports("avx512f")) ||
             (!strcmp(f, "avx512vnni") && __builtin_cpu_supports("avx512vnni")) ||
             (!strcmp(f, "amx-int8") && __builtin_cpu_supports("amx-int8") && amx_ready());
    if (!ok) continue;
    double one = rate(w), all = 0;
#pragma omp parallel num_threads(threads) reduction(+ : all)
    {
      all += rate(w);
    }
    printf("%-14s %7.1f GMAC/s one thread, %7.1f with %d threads\n", KINDS[w].name, one, all,
           threads);
    if (!strcmp(f, "amx-int8"))
      printf("%-14s %7.1f ns a 1 KiB tile from L1, one thread (tdpbusd above: %.1f ns)\n",
             "tileloadd", tile_load_ns(), KINDS[w].macs / one);
  }
  return 0;
}
