/* ELF64 relocatable modules (lib/kmod.h).  Every field of the image is treated as untrusted. */
#include "lib/kmod.h"
#include "lib/string.h"
#include "lib/vbs_abi.h"

struct elf64_ehdr {
    u8 ident[16];
    u16 type, machine;
    u32 version;
    u64 entry, phoff, shoff;
    u32 flags;
    u16 ehsize, phentsize, phnum, shentsize, shnum, shstrndx;
} PACKED;

struct elf64_shdr {
    u32 name, type;
    u64 flags, addr, offset, size;
    u32 link, info;
    u64 addralign, entsize;
} PACKED;

struct elf64_sym {
    u32 name;
    u8 info, other;
    u16 shndx;
    u64 value, size;
} PACKED;

struct elf64_rela {
    u64 offset, info;
    s64 addend;
} PACKED;

#define SHT_PROGBITS 1
#define SHT_SYMTAB 2
#define SHT_STRTAB 3
#define SHT_RELA 4
#define SHT_NOBITS 8
#define SHF_WRITE 1
#define SHF_ALLOC 2
#define SHF_EXECINSTR 4
#define SHN_UNDEF 0
#define SHN_ABS 0xfff1
#define SHN_COMMON 0xfff2
#define R_X86_64_64 1
#define R_X86_64_PC32 2
#define R_X86_64_PLT32 4
#define R_X86_64_32 10
#define R_X86_64_32S 11
#define MAX_MODULE (1ull << 20)

static bool in_bounds(u64 off, u64 size, u64 len) { return off <= len && size <= len - off; }

static const struct elf64_shdr *shdrs(const u8 *img) { return (const void *)(img + ((const struct elf64_ehdr *)img)->shoff); }

/* NUL-terminated string at strtab section + off, or NULL */
static const char *str_at(const u8 *img, u64 len, const struct elf64_shdr *strtab, u64 off)
{
    if (strtab->type != SHT_STRTAB || off >= strtab->size || !in_bounds(strtab->offset, strtab->size, len))
        return NULL;
    const char *s = (const char *)img + strtab->offset + off;
    u64 max = strtab->size - off;
    if (strnlen(s, max) == max)
        return NULL;
    return s;
}

static u64 align_up(u64 v, u64 a) { return (v + a - 1) & ~(a - 1); }

int kmod_layout(const u8 *img, u64 len, struct kmod_layout *L)
{
    memset(L, 0, sizeof(*L));
    L->modinit_sec = L->kcfg_sec = -1;
    const struct elf64_ehdr *eh = (const void *)img;
    if (len < sizeof(*eh) || len > MAX_MODULE || memcmp(eh->ident, "\177ELF\2\1\1", 7) || eh->type != 1 ||
        eh->machine != 62 || eh->shentsize != sizeof(struct elf64_shdr) || eh->shnum == 0 ||
        eh->shnum > KMOD_MAX_SECTIONS || eh->shstrndx >= eh->shnum ||
        !in_bounds(eh->shoff, (u64)eh->shnum * sizeof(struct elf64_shdr), len) || (eh->shoff & 7))
        return -VBS_ENOEXEC;
    L->nsec = eh->shnum;
    const struct elf64_shdr *sh = shdrs(img), *shstr = &sh[eh->shstrndx];
    u64 off[3] = {0, 0, 0};
    for (int cls = 0; cls < 3; cls++) {
        u64 o = 0;
        for (u32 i = 0; i < L->nsec; i++) {
            const struct elf64_shdr *s = &sh[i];
            if (!(s->flags & SHF_ALLOC) || s->size == 0)
                continue;
            if (s->type != SHT_PROGBITS && s->type != SHT_NOBITS)
                return -VBS_ENOEXEC;
            int c = (s->flags & SHF_EXECINSTR) ? 0 : (s->flags & SHF_WRITE) ? 2 : 1;
            if (c != cls)
                continue;
            if (s->type == SHT_NOBITS && c != 2)
                return -VBS_ENOEXEC;
            if (s->type == SHT_PROGBITS && !in_bounds(s->offset, s->size, len))
                return -VBS_ENOEXEC;
            u64 a = s->addralign ? s->addralign : 1;
            if (a > 4096 || (a & (a - 1)) || s->size > MAX_MODULE)
                return -VBS_ENOEXEC;
            o = align_up(o, a);
            L->sec_off[i] = o;
            L->sec_class[i] = (u8)(1u << c);
            o += s->size;
            const char *name = str_at(img, len, shstr, s->name);
            if (!name)
                return -VBS_ENOEXEC;
            if (!strcmp(name, ".modinit")) {
                if (c != 1 || s->size != 8)
                    return -VBS_ENOEXEC;
                L->modinit_sec = (int)i;
            } else if (!strcmp(name, ".kcfg_targets")) {
                if (c != 1 || (s->size & 7))
                    return -VBS_ENOEXEC;
                L->kcfg_sec = (int)i;
                L->kcfg_count = s->size / 8;
            }
        }
        off[cls] = align_up(o, 4096);
    }
    L->ro_off = off[0];
    L->data_off = off[0] + off[1];
    L->total = L->data_off + off[2];
    for (u32 i = 0; i < L->nsec; i++)
        if (L->sec_class[i] == KMOD_RO)
            L->sec_off[i] += L->ro_off;
        else if (L->sec_class[i] == KMOD_DATA)
            L->sec_off[i] += L->data_off;
    if (L->total > MAX_MODULE || L->modinit_sec < 0)
        return -VBS_ENOEXEC;
    return 0;
}

int kmod_link(const u8 *img, u64 len, const struct kmod_layout *L, u8 *dst, u64 dst_va, u32 classes,
              kmod_resolve_fn resolve, void *ctx)
{
    const struct elf64_shdr *sh = shdrs(img);
    for (u32 i = 0; i < L->nsec; i++) {
        if (!(L->sec_class[i] & classes))
            continue;
        if (sh[i].type == SHT_NOBITS)
            memset(dst + L->sec_off[i], 0, sh[i].size);
        else
            memcpy(dst + L->sec_off[i], img + sh[i].offset, sh[i].size);
    }
    for (u32 r = 0; r < L->nsec; r++) {
        const struct elf64_shdr *rs = &sh[r];
        if (rs->type != SHT_RELA)
            continue;
        if (rs->info >= L->nsec || rs->link >= L->nsec || !in_bounds(rs->offset, rs->size, len) ||
            rs->entsize != sizeof(struct elf64_rela) || (rs->offset & 7))
            return -VBS_ENOEXEC;
        u32 tsec = rs->info;
        if (!L->sec_class[tsec]) {
            if (sh[tsec].flags & SHF_ALLOC)
                return -VBS_ENOEXEC;
            continue; /* relocations of a non-loaded section (debug info) */
        }
        if (!(L->sec_class[tsec] & classes))
            continue;
        const struct elf64_shdr *symtab = &sh[rs->link];
        if (symtab->type != SHT_SYMTAB || symtab->entsize != sizeof(struct elf64_sym) || symtab->link >= L->nsec ||
            !in_bounds(symtab->offset, symtab->size, len) || (symtab->offset & 7))
            return -VBS_ENOEXEC;
        const struct elf64_sym *syms = (const void *)(img + symtab->offset);
        u64 nsyms = symtab->size / sizeof(struct elf64_sym);
        const struct elf64_rela *rel = (const void *)(img + rs->offset);
        for (u64 k = 0; k < rs->size / sizeof(struct elf64_rela); k++) {
            u32 type = (u32)rel[k].info, symi = (u32)(rel[k].info >> 32);
            if (symi >= nsyms)
                return -VBS_ENOEXEC;
            const struct elf64_sym *sym = &syms[symi];
            u64 S;
            if (sym->shndx == SHN_UNDEF) {
                const char *name = str_at(img, len, &sh[symtab->link], sym->name);
                S = name ? resolve(name, ctx) : 0;
                if (!S)
                    return -VBS_ENOENT;
            } else if (sym->shndx == SHN_ABS) {
                S = sym->value;
            } else if (sym->shndx < L->nsec && L->sec_class[sym->shndx] && sym->value <= sh[sym->shndx].size) {
                S = dst_va + L->sec_off[sym->shndx] + sym->value;
            } else {
                return -VBS_ENOEXEC;
            }
            u64 width = type == R_X86_64_64 ? 8 : 4;
            if (!in_bounds(rel[k].offset, width, sh[tsec].size))
                return -VBS_ENOEXEC;
            u8 *P = dst + L->sec_off[tsec] + rel[k].offset;
            u64 P_va = dst_va + L->sec_off[tsec] + rel[k].offset;
            u64 v = S + (u64)rel[k].addend;
            switch (type) {
            case R_X86_64_64:
                memcpy(P, &v, 8);
                continue;
            case R_X86_64_PC32:
            case R_X86_64_PLT32:
                v -= P_va;
                if ((s64)v != (s32)v)
                    return -VBS_ENOEXEC;
                break;
            case R_X86_64_32:
                if (v >> 32)
                    return -VBS_ENOEXEC;
                break;
            case R_X86_64_32S:
                if ((s64)v != (s32)v)
                    return -VBS_ENOEXEC;
                break;
            default:
                return -VBS_ENOEXEC;
            }
            u32 v32 = (u32)v;
            memcpy(P, &v32, 4);
        }
    }
    return 0;
}

u64 kmod_section_u64(const struct kmod_layout *L, const u8 *dst, int sec, u64 i)
{
    if (sec < 0)
        return 0;
    u64 v;
    memcpy(&v, dst + L->sec_off[sec] + 8 * i, 8);
    return v;
}
