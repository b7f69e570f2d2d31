// Which vector operations take vpdpbusd's issue slots on this CPU: each line times 8
// independent `vpdpbusd zmm` chains alone, then with other operations in the same loop
// (on independent registers). An operation that runs beside vpdpbusd leaves the time at the
// first line's; one that shares its pipes adds a vpdpbusd's time per instruction (the last
// three read their operand from memory, as the passes' activations and scales are). The K
// kernels are bound by the count of the second kind (benches/README, Session 37), so this is
// what to run on a new CPU before changing how they unpack their bits. Needs AVX-512 VNNI,
// BW and GFNI. Hand-written: no Debian package measures two instructions' overlap.
//   gcc -O2 -march=native benches/issue-slots.c -o slots && ./slots
#include <stdio.h>
#include <time.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

#define N 50000000L
#define D(i) "vpdpbusd %%zmm0, %%zmm" #i ", %%zmm" #i "\n\t"
#define D8 D(1) D(2) D(3) D(4) D(5) D(6) D(7) D(8)
#define TWO(op) op(9) op(10)
#define MULLD(i) "vpmulld %%zmm0, %%zmm" #i ", %%zmm" #i "\n\t"
#define MADDWD(i) "vpmaddwd %%zmm0, %%zmm" #i ", %%zmm" #i "\n\t"
#define TESTMB(i) "vptestmb %%zmm0, %%zmm" #i ", %%k1\n\t"
#define CMPEQB(i) "vpcmpeqb %%zmm0, %%zmm" #i ", %%k1\n\t"
#define SRLWX(i) "vpsrlw %%xmm0, %%zmm" #i ", %%zmm" #i "\n\t"
#define SRLWI(i) "vpsrlw $4, %%zmm" #i ", %%zmm" #i "\n\t"
#define SRLVW(i) "vpsrlvw %%zmm0, %%zmm" #i ", %%zmm" #i "\n\t"
#define GF2P8(i) "vgf2p8affineqb $0, %%zmm0, %%zmm" #i ", %%zmm" #i "\n\t"
#define TERNLOG(i) "vpternlogq $0xEA, %%zmm0, %%zmm0, %%zmm" #i "\n\t"
#define ANDQ(i) "vpandq %%zmm0, %%zmm" #i ", %%zmm" #i "\n\t"
#define ADDB(i) "vpaddb %%zmm0, %%zmm" #i ", %%zmm" #i "\n\t"
#define MASKMOV(i) "vmovdqu8 %%zmm0, %%zmm" #i "%{%%k1%}\n\t"
#define PSHUFB(i) "vpshufb %%zmm0, %%zmm" #i ", %%zmm" #i "\n\t"
#define CVT(i) "vcvtdq2ps %%zmm" #i ", %%zmm" #i "\n\t"
#define FMA(i) "vfmadd231ps %%zmm0, %%zmm0, %%zmm" #i "\n\t"
#define MULPS(i) "vmulps %%zmm0, %%zmm" #i ", %%zmm" #i "\n\t"
// Operands read from memory (`%1`: a 64-byte buffer), as the passes read activations.
#define BCASTM(i) "vpbroadcastd (%1), %%zmm" #i "\n\t"
#define ADDM(i) "vpaddd (%1)%{1to16%}, %%zmm" #i ", %%zmm" #i "\n\t"
#define MOVSXM(i) "vpmovsxbd (%1), %%zmm" #i "\n\t"
static int buf[16] __attribute__((aligned(64)));

#define TIME(body, name)                                                                      \
  {                                                                                           \
    long n = N;                                                                               \
    double t0 = now();                                                                        \
    __asm__ volatile("vpxor %%xmm0, %%xmm0, %%xmm0\n\t1:\n\t" body "dec %0\n\tjnz 1b\n\t"     \
                     : "+r"(n)                                                                \
                     : "r"(buf)                                                               \
                     : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8",   \
                       "xmm9", "xmm10", "k1", "cc");                                          \
    printf("8 vpdpbusd + %-22s %.3f ns\n", name, (now() - t0) / N * 1e9);                   \
  }

int main(void) {
  TIME(D8, "nothing")
  TIME(D8 TWO(MULLD), "2 vpmulld")
  TIME(D8 TWO(MADDWD), "2 vpmaddwd")
  TIME(D8 TWO(TESTMB), "2 vptestmb")
  TIME(D8 TWO(CMPEQB), "2 vpcmpeqb (mask)")
  TIME(D8 TWO(SRLWX), "2 vpsrlw by xmm")
  TIME(D8 TWO(SRLWI), "2 vpsrlw by imm")
  TIME(D8 TWO(SRLVW), "2 vpsrlvw")
  TIME(D8 TWO(GF2P8), "2 vgf2p8affineqb")
  TIME(D8 TWO(TERNLOG), "2 vpternlogq")
  TIME(D8 TWO(ANDQ), "2 vpandq")
  TIME(D8 TWO(ADDB), "2 vpaddb")
  TIME(D8 TWO(MASKMOV), "2 masked vmovdqu8")
  TIME(D8 TWO(PSHUFB), "2 vpshufb")
  TIME(D8 TWO(CVT), "2 vcvtdq2ps")
  TIME(D8 TWO(FMA), "2 vfmadd231ps")
  TIME(D8 TWO(MULPS), "2 vmulps")
  TIME(D8 TWO(BCASTM), "2 vpbroadcastd (mem)")
  TIME(D8 TWO(ADDM), "2 vpaddd (mem){1to16}")
  TIME(D8 TWO(MOVSXM), "2 vpmovsxbd (mem)")
  return 0;
}
