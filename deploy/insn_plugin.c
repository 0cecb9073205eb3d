/*
 * Minimal QEMU TCG plugin: count the guest instructions a user-mode process retires.
 *
 * Part of MobileDL on TVM (deploy/). Built by deploy.device.setup() against the
 * qemu-plugin.h header of the installed QEMU (Debian's source package); QEMU loads it with
 *
 *     qemu-aarch64 -plugin /path/libinsn.so,out=/path/count.txt  PROGRAM ...
 *
 * Every translated instruction gets an inline "add 1" on a 64-bit counter, so the count is
 * exact (also when a translation block is left early). At exit the total is written to the
 * file given by out= (or to QEMU's log when out= is missing) as one decimal line.
 * The counter is shared by all guest threads without atomics: count single-threaded guests.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <qemu-plugin.h>

#if !defined(QEMU_PLUGIN_VERSION) || QEMU_PLUGIN_VERSION < 1
#error "qemu-plugin.h API version 1 or later is needed"
#endif

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

static uint64_t insn_count;
static char out_path[4096];

static void on_tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    size_t n = qemu_plugin_tb_n_insns(tb);
    size_t i;

    (void)id;
    for (i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        qemu_plugin_register_vcpu_insn_exec_inline(insn, QEMU_PLUGIN_INLINE_ADD_U64,
                                                   &insn_count, 1);
    }
}

static void on_plugin_exit(qemu_plugin_id_t id, void *userdata)
{
    char line[64];

    (void)id;
    (void)userdata;
    snprintf(line, sizeof(line), "%" PRIu64 "\n", insn_count);
    if (out_path[0]) {
        FILE *f = fopen(out_path, "w");
        if (f) {
            fputs(line, f);
            fclose(f);
            return;
        }
    }
    qemu_plugin_outs(line);
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info,
                                           int argc, char **argv)
{
    int i;

    (void)info;
    for (i = 0; i < argc; i++) {
        if (strncmp(argv[i], "out=", 4) == 0) {
            size_t len = strlen(argv[i] + 4);
            if (len >= sizeof(out_path)) {
                fprintf(stderr, "libinsn: out= path too long\n");
                return -1;
            }
            memcpy(out_path, argv[i] + 4, len + 1);
        } else {
            fprintf(stderr, "libinsn: unknown argument %s\n", argv[i]);
            return -1;
        }
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_tb_trans);
    qemu_plugin_register_atexit_cb(id, on_plugin_exit, NULL);
    return 0;
}
