/*
 * QEMU TCG plugin: instructions retired between two points a guest program marks.
 *
 * Part of MobileDL on TVM (deploy/). A guest marks a point with the otherwise unused
 * system call MDL_MARKER (it returns -ENOSYS):
 *
 *     syscall(0x4d444c, id)
 *
 * and the plugin appends "id count" to PREFIX.<pid> (out=PREFIX), where count is the number
 * of guest instructions retired so far. The guest reads the file back: the difference of
 * two marks is the cost of what ran between them, deterministic and free of the guest's
 * start-up. The emulated phone's RPC workers run under it to measure tuning candidates in
 * instructions (deploy/phone_functions.py). Every translated instruction gets an inline
 * "add 1" on one 64-bit counter: mark single-threaded code.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <qemu-plugin.h>

#if !defined(QEMU_PLUGIN_VERSION) || QEMU_PLUGIN_VERSION < 1
#error "qemu-plugin.h API version 1 or later is needed"
#endif

#define MDL_MARKER 0x4d444c

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

static uint64_t insn_count;
static char prefix[4000];
static FILE *marks;

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

static void on_syscall(qemu_plugin_id_t id, unsigned int vcpu_index, int64_t num,
                       uint64_t a1, uint64_t a2, uint64_t a3, uint64_t a4, uint64_t a5,
                       uint64_t a6, uint64_t a7, uint64_t a8)
{
    (void)id, (void)vcpu_index, (void)a2, (void)a3, (void)a4, (void)a5, (void)a6, (void)a7;
    (void)a8;
    if (num != MDL_MARKER) {
        return;
    }
    if (!marks) {
        char path[4096];
        snprintf(path, sizeof(path), "%s.%ld", prefix, (long)getpid());
        marks = fopen(path, "a");
        if (!marks) {
            return;
        }
    }
    fprintf(marks, "%" PRIu64 " %" PRIu64 "\n", a1, insn_count);
    fflush(marks);
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info,
                                           int argc, char **argv)
{
    int i;

    (void)info;
    for (i = 0; i < argc; i++) {
        if (strncmp(argv[i], "out=", 4) == 0 && strlen(argv[i] + 4) < sizeof(prefix)) {
            strcpy(prefix, argv[i] + 4);
        } else {
            fprintf(stderr, "libinsnmark: bad argument %s (want out=PREFIX)\n", argv[i]);
            return -1;
        }
    }
    if (!prefix[0]) {
        fprintf(stderr, "libinsnmark: out=PREFIX is required\n");
        return -1;
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_tb_trans);
    qemu_plugin_register_vcpu_syscall_cb(id, on_syscall);
    return 0;
}
