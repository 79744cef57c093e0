/*
 * /proc/kallsyms: "address type name" for the symbols listed with KSYM(), world-readable.  The
 * reference guest models a kernel without KASLR and with kptr_restrict=0 (or an attacker who already
 * has an address leak): the attack programs look addresses up here rather than hard-coding them, as
 * real exploits do with a leak or System.map.  Type: T = kernel text, D = anything else.
 */
#include "lib/desc.h"
#include "lib/string.h"
#include "lib/x86.h"
#include "vbs/vtl0/kernel.h"

u64 cr4_shadow;
char kallsyms_text[8192];
u64 kallsyms_len;

extern char gadget_write_cr4[], gadget_write_cr0[], gadget_write_mem[];
extern u64 kdp_canary;

KSYM(current);
KSYM(cred_root);
KSYM(cred_user);
KSYM(syscall_table);
KSYM(kdp_canary);
KSYM(vbs);
KSYM(module_dir);
KSYM(files_table);
KSYM(cr4_shadow);
KSYM(gadget_write_cr4);
KSYM(gadget_write_cr0);
KSYM(gadget_write_mem);
KSYM(idt_ptr);
KSYM(gdt_ptr);
KSYM(gdt_table);
KSYM(kpt);
KSYM(__kernel_start);
KSYM(__ktext_end);
KSYM(__text_end);
KSYM(__kcfg_start);
KSYM(__kcfg_end);
KSYM(__hvcall_page);
KSYM(__ro_after_init_start);
KSYM(__data_start);
KSYM(kcfg_blocked);
KSYM(kprintf);
KSYM(sys_vulndrv);

/* families 1-5 (docs/attacks.md): MSR and descriptor-table gadgets, a text cave */
extern char gadget_wrmsr[], gadget_rdmsr[], gadget_lidt[], gadget_lgdt[], gadget_iretq[], gadget_read_cr0[];
KSYM(gadget_wrmsr);
KSYM(gadget_rdmsr);
KSYM(gadget_lidt);
KSYM(gadget_lgdt);
KSYM(gadget_iretq);
KSYM(gadget_read_cr0);
KSYM(run_checks);

/* families 6-9 (docs/attacks.md): injection targets (a .bss buffer, the
 * system-call stack), the file table size (module planting), a kCFG non-target gadget */
extern char gadget_read_mem[];
KSYM(kallsyms_text);
KSYM(rsp0_stack);
KSYM(syscall_kstack_top);
KSYM(n_files);
KSYM(gadget_read_mem);

/* families 10-11 (docs/attacks.md): kernel functions a ROP chain calls with several
 * arguments (VULNDRV_CALL6), the VTL-call stub pointer, ROP gadgets, a text-patch victim */
extern u64 vtl_call_stub;
extern char gadget_pop_rdi_rsi_rdx[], text_victim[];
KSYM(page_alloc);
KSYM(map_page);
KSYM(memcpy);
KSYM(vbs_cred_key_vtl0);
KSYM(cred_hmac);
KSYM(wrmsr_safe);
KSYM(rdmsr_safe);
KSYM(vtl_call_stub);
KSYM(gadget_pop_rdi_rsi_rdx);
KSYM(text_victim);

void kallsyms_init(void)
{
    cr4_shadow = read_cr4();
    u64 o = 0;
    for (const struct ksym *k = (const struct ksym *)__ksyms_start; k < (const struct ksym *)__ksyms_end; k++) {
        char t = k->addr >= (u64)__kernel_start && k->addr < (u64)__ktext_end ? 'T' : 'D';
        int n = ksnprintf(kallsyms_text + o, sizeof(kallsyms_text) - o, "%016lx %c %s\n", k->addr, t, k->name);
        if (n < 0 || o + (u64)n >= sizeof(kallsyms_text))
            break;
        o += (u64)n;
    }
    kallsyms_len = o;
}
