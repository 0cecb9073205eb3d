/*
 * QEMU TCG plugin: the peak resident memory of a user-mode QEMU process (guest included).
 *
 * Part of MobileDL on TVM (deploy/). Built on first use by deploy.plugins.build_plugin;
 * QEMU loads it with (out= is required)
 *
 *     qemu-aarch64 -plugin /path/librss.so,out=/path/rss.txt  PROGRAM ...
 *
 * It instruments nothing: at exit, while the guest's memory is still mapped, it copies
 * the "VmHWM:" line of QEMU's own /proc/self/status (the high-water mark of the process's
 * resident set, in kB) to the out= file as one decimal number. The guest's own peak is
 * that minus the same reading of a trivial guest program (QEMU's baseline). A reading
 * from outside (getrusage of the child) would carry over the parent's peak across
 * fork + exec; polling /proc from outside could miss the last moments.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <qemu-plugin.h>

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

static char out_path[4096];

static void on_plugin_exit(qemu_plugin_id_t id, void *userdata)
{
    char line[256];
    long kb = -1;
    FILE *f = fopen("/proc/self/status", "r");

    (void)id;
    (void)userdata;
    while (f && kb < 0 && fgets(line, sizeof(line), f)) {
        if (strncmp(line, "VmHWM:", 6) == 0) {
            kb = strtol(line + 6, NULL, 10);
        }
    }
    if (f) {
        fclose(f);
    }
    f = fopen(out_path, "w");
    if (f) {
        fprintf(f, "%ld\n", kb);
        fclose(f);
    }
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info,
                                           int argc, char **argv)
{
    (void)info;
    if (argc != 1 || strncmp(argv[0], "out=", 4) != 0 || strlen(argv[0] + 4) >= sizeof(out_path)) {
        fprintf(stderr, "librss: give one argument, out=PATH\n");
        return -1;
    }
    strcpy(out_path, argv[0] + 4);
    qemu_plugin_register_atexit_cb(id, on_plugin_exit, NULL);
    return 0;
}
