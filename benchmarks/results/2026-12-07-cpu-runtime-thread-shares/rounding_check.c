// The exhaustive check of the int8 rounding (int8_inputs.rs, nearest_int8): trunc(v + copysign(nextafter(0.5, 0), v)) against roundf(v) for every float of magnitude up to 200. gcc -O2 rounding_check.c -lm: "checked 2257584130 bad 0".
#include <stdio.h>
#include <math.h>
#include <string.h>
#include <stdint.h>
int main(){ long bad=0, n=0; float h = nextafterf(0.5f, 0.0f);
 for (uint64_t b=0; b<0x100000000ull; b++){ uint32_t u=(uint32_t)b; float v; memcpy(&v,&u,4); if(!(fabsf(v)<=200.0f)) continue; n++;
  int a = (int)(v + copysignf(h, v)); int r = (int)roundf(v); if(a!=r){ if(bad<5) printf("%a %d %d\n", v, a, r); bad++; } }
 printf("checked %ld bad %ld\n", n, bad); }
