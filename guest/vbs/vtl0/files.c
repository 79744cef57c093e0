/* A tiny in-kernel file table: contents in the signed image, the table itself ro_after_init. */
#include "lib/string.h"
#include "vbs/vtl0/kernel.h"

extern const u8 mod_hello_ko[], mod_hello_ko_end[], mod_unsigned_ko[], mod_unsigned_ko_end[], mod_tampered_ko[],
    mod_tampered_ko_end[];

static const char motd[] = "Welcome to the vtlvisor VBS reference guest.\n";
static const char shadow[] = "root:$6$vtlvisor$s3cr3t-h4sh-0f-r00t:19700:0:99999:7:::\n";

#define NFILES 6
const int n_files = NFILES;
struct file files_table[NFILES] __ro_after_init;

void files_init(void)
{
    struct file *f = files_table;
    f[0] = (struct file){"/etc/motd", 0, 0644, (const u8 *)motd, sizeof(motd) - 1};
    f[1] = (struct file){"/etc/shadow", 0, 0600, (const u8 *)shadow, sizeof(shadow) - 1};
    f[2] = (struct file){"/lib/modules/hello.ko", 0, 0644, mod_hello_ko, (u64)(mod_hello_ko_end - mod_hello_ko)};
    f[3] = (struct file){"/lib/modules/unsigned.ko", 0, 0644, mod_unsigned_ko,
                         (u64)(mod_unsigned_ko_end - mod_unsigned_ko)};
    f[4] = (struct file){"/lib/modules/tampered.ko", 0, 0644, mod_tampered_ko,
                         (u64)(mod_tampered_ko_end - mod_tampered_ko)};
    kallsyms_init();
    f[5] = (struct file){"/proc/kallsyms", 0, 0444, (const u8 *)kallsyms_text, kallsyms_len};
}

const struct file *file_lookup(const char *path)
{
    for (int i = 0; i < n_files; i++)
        if (files_table[i].path && !strcmp(files_table[i].path, path))
            return &files_table[i];
    return NULL;
}
