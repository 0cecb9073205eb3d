/*
 * QEMU TCG plugin: instructions retired per guest address, for a per-kernel profile.
 *
 * Part of MobileDL on TVM (deploy/kernel_profile.py), built on first use against the
 * qemu-plugin.h that deploy.device.setup() caches next to libinsn.so; QEMU loads it with
 *
 *     qemu-aarch64 -plugin /path/libinsnprof.so,out=/path/profile.txt  PROGRAM ...
 *
 * Every translated instruction gets an inline "add 1" on the counter of its guest virtual
 * address (an open-addressing table of 2^23 slots, allocated once), so counts are exact like
 * libinsn.so's. At exit each executed address is written to out= as "hexaddr count hexword"
 * with its 32-bit instruction word, which lets the host find where a library was loaded by
 * matching its code.
 * No atomics: profile single-threaded guests.
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

#define SLOTS (1u << 23)

static uint64_t *keys;   /* guest address + 1 (0 marks a free slot) */
static uint64_t *counts;
static uint32_t *words;
static uint64_t used;
static char out_path[4096];

static uint64_t *counter_for(uint64_t vaddr, uint32_t word)
{
    uint64_t key = vaddr + 1;
    uint64_t h = (key * 0x9E3779B97F4A7C15ull) >> 40;

    for (;;) {
        h &= SLOTS - 1;
        if (keys[h] == key) {
            return &counts[h];
        }
        if (keys[h] == 0) {
            if (++used > SLOTS / 2) {
                fprintf(stderr, "libinsnprof: more than %u distinct addresses\n", SLOTS / 2);
                exit(1);
            }
            keys[h] = key;
            words[h] = word;
            return &counts[h];
        }
        h++;
    }
}

static void on_tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    size_t n = qemu_plugin_tb_n_insns(tb);
    size_t i;

    (void)id;
    for (i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        uint32_t word = 0;
#if QEMU_PLUGIN_VERSION >= 3
        qemu_plugin_insn_data(insn, &word, sizeof(word));
#else
        if (qemu_plugin_insn_size(insn) == sizeof(word)) {
            memcpy(&word, qemu_plugin_insn_data(insn), sizeof(word));
        }
#endif
        qemu_plugin_register_vcpu_insn_exec_inline(
            insn, QEMU_PLUGIN_INLINE_ADD_U64,
            counter_for(qemu_plugin_insn_vaddr(insn), word), 1);
    }
}

static void on_plugin_exit(qemu_plugin_id_t id, void *userdata)
{
    FILE *f = fopen(out_path, "w");
    uint64_t i;

    (void)id;
    (void)userdata;
    if (!f) {
        qemu_plugin_outs("libinsnprof: cannot write the out= file\n");
        return;
    }
    for (i = 0; i < SLOTS; i++) {
        if (counts[i]) {
            fprintf(f, "%" PRIx64 " %" PRIu64 " %" PRIx32 "\n", keys[i] - 1, counts[i],
                    words[i]);
        }
    }
    fclose(f);
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info,
                                           int argc, char **argv)
{
    int i;

    (void)info;
    for (i = 0; i < argc; i++) {
        if (strncmp(argv[i], "out=", 4) == 0 && strlen(argv[i] + 4) < sizeof(out_path)) {
            strcpy(out_path, argv[i] + 4);
        } else {
            fprintf(stderr, "libinsnprof: bad argument %s (expected out=PATH)\n", argv[i]);
            return -1;
        }
    }
    if (!out_path[0]) {
        fprintf(stderr, "libinsnprof: out=PATH is required\n");
        return -1;
    }
    keys = calloc(SLOTS, sizeof(*keys));
    counts = calloc(SLOTS, sizeof(*counts));
    words = calloc(SLOTS, sizeof(*words));
    if (!keys || !counts || !words) {
        fprintf(stderr, "libinsnprof: out of memory\n");
        return -1;
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_tb_trans);
    qemu_plugin_register_atexit_cb(id, on_plugin_exit, NULL);
    return 0;
}
