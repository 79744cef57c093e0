/* CPU bring-up shared by the VTL0 kernels: 8259 off, feature detection, NX, WP/SMEP/SMAP/UMIP. */
#include "lib/cpu.h"
#include "lib/bootinfo.h"
#include "lib/desc.h"
#include "lib/io.h"
#include "lib/msr.h"
#include "lib/string.h"
#include "lib/x86.h"

struct cpu_features cpu;
bool smap_on, smep_on, umip_on, nx_on;

void pic_disable(void)
{
    /* Remap the 8259s to VEC_PIC_BASE (away from exception vectors) and mask everything. */
    outb(0x20, 0x11);
    outb(0xa0, 0x11);
    outb(0x21, VEC_PIC_BASE);
    outb(0xa1, VEC_PIC_BASE + 8);
    outb(0x21, 4);
    outb(0xa1, 2);
    outb(0x21, 1);
    outb(0xa1, 1);
    outb(0x21, 0xff);
    outb(0xa1, 0xff);
}

void cpu_setup(void)
{
    cpu_detect(&cpu);
    kprintf("cpu: vendor=%s max_leaf=0x%x max_ext=0x%x apic=%d x2apic=%d nx=%d smep=%d smap=%d umip=%d\n",
            cpu.vendor, cpu.max_leaf, cpu.max_ext_leaf, cpu.apic, cpu.x2apic, cpu.nx, cpu.smep, cpu.smap, cpu.umip);
    nx_on = cpu.nx;
    if (nx_on)
        wrmsr(MSR_EFER, rdmsr(MSR_EFER) | EFER_NXE);
}

void cpu_protect(void)
{
    write_cr0(read_cr0() | CR0_WP);
    u64 cr4 = read_cr4();
    if (cpu.smep)
        cr4 |= CR4_SMEP;
    if (cpu.smap)
        cr4 |= CR4_SMAP;
    if (cpu.umip && !word_is(cmdline_value("umip"), "off")) /* umip=off: leave it clear (attack rows) */
        cr4 |= CR4_UMIP;
    write_cr4(cr4);
    cr4 = read_cr4();
    smep_on = !!(cr4 & CR4_SMEP);
    smap_on = !!(cr4 & CR4_SMAP);
    umip_on = !!(cr4 & CR4_UMIP);
    if (smap_on)
        clac();
    kprintf("cpu: enabled:%s WP%s%s%s (cr0=0x%lx cr4=0x%lx efer=0x%lx)\n", nx_on ? " NX" : "",
            smep_on ? " SMEP" : "", smap_on ? " SMAP" : "", umip_on ? " UMIP" : "", read_cr0(), cr4,
            rdmsr(MSR_EFER));
}

