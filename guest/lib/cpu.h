/* CPU bring-up shared by the VTL0 kernels (lib/cpu.c). */
#ifndef GUEST_LIB_CPU_H
#define GUEST_LIB_CPU_H

#include "lib/cpuid.h"
#include "lib/types.h"

extern struct cpu_features cpu;
extern bool smap_on, smep_on, umip_on, nx_on;

void pic_disable(void); /* remap the 8259s to VEC_PIC_BASE and mask them */
void cpu_setup(void);   /* detect features (prints the cpu: line), EFER.NXE */
void cpu_protect(void); /* CR0.WP, CR4.SMEP/SMAP/UMIP as available (prints the cpu: enabled line) */

#endif
