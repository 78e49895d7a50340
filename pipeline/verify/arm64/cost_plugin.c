/*
 * The project's QEMU TCG plugin: counts the guest instructions executed between markers.
 *
 * Built by `python -m pipeline arm64-setup` against qemu-plugin.h of the installed QEMU (Debian's qemu-user, whose
 * dynamic qemu-aarch64 accepts -plugin) and loaded as
 *
 *     qemu-aarch64 -plugin cost_plugin.so,out=MARKS.txt -cpu CPU -L SYSROOT SYSROOT/usr/bin/python3.11 ...
 *
 * Counting: every translated block adds its instruction count to one 64-bit counter with an inline add (no helper
 * call), so the counter is the number of guest instructions executed so far, by all threads together. Run the
 * measured code on ONE thread: two threads racing on the non-atomic add lose increments.
 *
 * Markers: the guest makes a syscall that does nothing, close(MAGIC + k) (no such descriptor: EBADF), and the
 * syscall callback writes "k count" to the out file at once. The instructions between markers k and k+1 are
 * exactly what the guest executed between them, independent of everything before (interpreter start-up,
 * imports, address-space layout), which whole-process totals are not.
 *
 * Output lines:   # cost_plugin VERSION api QEMU_PLUGIN_VERSION     (header)
 *                 k count threads                                  (one per marker, in order)
 *                 # exit count                                     (at exit: the whole process)
 * where threads is the number of guest threads (vCPUs) alive at the marker: more than one means another thread
 * could have added to the count between two markers.
 */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <qemu-plugin.h>

#define COST_PLUGIN_VERSION "2"
#define MARKER_MAGIC 0x51C00000u /* close(MARKER_MAGIC + k), 0 <= k < 65536 */
#define MARKER_MASK 0xFFFF0000u
#define SYSCALL_CLOSE_AARCH64 57 /* the generic Linux syscall table of arm64 */

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

static uint64_t executed; /* guest instructions executed, all vCPUs */
static int threads;        /* guest threads alive (vCPUs initialised and not exited) */
static FILE *out;

static void tb_translated(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &executed,
                                             qemu_plugin_tb_n_insns(tb));
}

static void syscall_entered(qemu_plugin_id_t id, unsigned int vcpu_index, int64_t num, uint64_t a1, uint64_t a2,
                            uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6, uint64_t a7, uint64_t a8)
{
    if (num == SYSCALL_CLOSE_AARCH64 && (a1 & 0xFFFFFFFFu) == a1 && (a1 & MARKER_MASK) == MARKER_MAGIC) {
        fprintf(out, "%" PRIu64 " %" PRIu64 " %d\n", a1 - MARKER_MAGIC, executed, __atomic_load_n(&threads, __ATOMIC_SEQ_CST));
        fflush(out);
    }
}

static void vcpu_started(qemu_plugin_id_t id, unsigned int vcpu_index)
{
    __atomic_add_fetch(&threads, 1, __ATOMIC_SEQ_CST);
}

static void vcpu_exited(qemu_plugin_id_t id, unsigned int vcpu_index)
{
    __atomic_sub_fetch(&threads, 1, __ATOMIC_SEQ_CST);
}

static void exiting(qemu_plugin_id_t id, void *data)
{
    fprintf(out, "# exit %" PRIu64 "\n", executed);
    fclose(out);
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv)
{
    const char *path = NULL;
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "out=", 4) == 0) {
            path = argv[i] + 4;
        } else {
            fprintf(stderr, "cost_plugin: unknown argument %s (takes out=FILE)\n", argv[i]);
            return -1;
        }
    }
    if (path == NULL) {
        fprintf(stderr, "cost_plugin: out=FILE is required\n");
        return -1;
    }
    out = fopen(path, "w");
    if (out == NULL) {
        perror(path);
        return -1;
    }
    fprintf(out, "# cost_plugin %s api %d\n", COST_PLUGIN_VERSION, QEMU_PLUGIN_VERSION);
    fflush(out);
    qemu_plugin_register_vcpu_tb_trans_cb(id, tb_translated);
    qemu_plugin_register_vcpu_syscall_cb(id, syscall_entered);
    qemu_plugin_register_vcpu_init_cb(id, vcpu_started);
    qemu_plugin_register_vcpu_exit_cb(id, vcpu_exited);
    qemu_plugin_register_atexit_cb(id, exiting, NULL);
    return 0;
}
