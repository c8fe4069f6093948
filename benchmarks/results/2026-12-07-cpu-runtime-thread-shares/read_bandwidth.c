// A plain read of a buffer by T threads (AVX-512 loads), best of five: gcc -O3 -march=native -pthread read_bandwidth.c; ./a.out T MIB.
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <time.h>
#include <pthread.h>
#include <immintrin.h>
static size_t N; static uint64_t *buf; static int T;
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
static void* run(void*a){long id=(long)a; size_t per=N/T; uint64_t *p=buf+id*per; __m512i s=_mm512_setzero_si512();
 for(size_t i=0;i<per;i+=8) s=_mm512_add_epi64(s,_mm512_loadu_si512(p+i)); uint64_t r[8]; _mm512_storeu_si512(r,s); return (void*)(r[0]+r[7]);}
int main(int c,char**v){T=atoi(v[1]); size_t bytes=(size_t)atol(v[2])<<20; N=bytes/8; buf=aligned_alloc(64,bytes); for(size_t i=0;i<N;i++)buf[i]=i;
 double best=1e9; for(int k=0;k<5;k++){double t0=now(); pthread_t th[8]; for(long i=0;i<T;i++)pthread_create(&th[i],0,run,(void*)i); for(int i=0;i<T;i++)pthread_join(th[i],0); double d=now()-t0; if(d<best)best=d;}
 printf("%d threads %zu MiB: %.2f GB/s\n",T,bytes>>20,bytes/best/1e9);}
