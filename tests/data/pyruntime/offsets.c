/* Prints offsetof() of every CPython internal field diag/pyruntime/offsets.py uses, from the
 * interpreter's own headers: compiled by tests/integration/test_pyruntime_offsets.py with
 * -DPy_BUILD_CORE against each interpreter found, and compared with the table.
 * Output: one "name value" pair per line. */
#define Py_BUILD_CORE 1
#include "Python.h"
#include <stddef.h>
#include <stdio.h>
#if PY_VERSION_HEX < 0x03090000
#  include "internal/pycore_pystate.h"
#else
#  include "internal/pycore_runtime.h"
#  include "internal/pycore_interp.h"
#  include "internal/pycore_gc.h"
#endif
#include "internal/pycore_gil.h"

#define P(name, expr) printf("%s %zu\n", name, (size_t)(expr))

int main(void) {
    printf("version_hex %lu\n", (unsigned long)PY_VERSION_HEX);
    P("runtime.interp_main", offsetof(_PyRuntimeState, interpreters.main));
    P("runtime.main_thread", offsetof(_PyRuntimeState, main_thread));
#if PY_VERSION_HEX < 0x030C0000
    P("runtime.gil", offsetof(_PyRuntimeState, ceval.gil));
#else
    P("interp.gil_ptr", offsetof(PyInterpreterState, ceval.gil));
#endif
#if PY_VERSION_HEX < 0x03090000
    P("runtime.gc", offsetof(_PyRuntimeState, gc));
#else
    P("interp.gc", offsetof(PyInterpreterState, gc));
#endif
    P("tstate.thread_id", offsetof(PyThreadState, thread_id));
#if PY_VERSION_HEX >= 0x030B0000
    P("tstate.native_thread_id", offsetof(PyThreadState, native_thread_id));
#endif
    P("gil.last_holder", offsetof(struct _gil_runtime_state, last_holder));
    P("gil.locked", offsetof(struct _gil_runtime_state, locked));
    P("gil.switch_number", offsetof(struct _gil_runtime_state, switch_number));
    P("gc.collecting", offsetof(struct _gc_runtime_state, collecting));
    P("gc.count0", offsetof(struct _gc_runtime_state, generations[0].count));
    P("gc.count1", offsetof(struct _gc_runtime_state, generations[1].count));
    P("gc.count2", offsetof(struct _gc_runtime_state, generations[2].count));
    P("gc.collections0", offsetof(struct _gc_runtime_state, generation_stats[0].collections));
    P("gc.collections1", offsetof(struct _gc_runtime_state, generation_stats[1].collections));
    P("gc.collections2", offsetof(struct _gc_runtime_state, generation_stats[2].collections));
#if PY_VERSION_HEX >= 0x030D0000
    /* where each field sits inside _Py_DebugOffsets (read by diag from the live process) */
    P("debug.size", sizeof(_Py_DebugOffsets));
    P("debug.at_runtime", offsetof(_PyRuntimeState, debug_offsets));
    P("debug.version", offsetof(_Py_DebugOffsets, version));
    P("debug.free_threaded", offsetof(_Py_DebugOffsets, free_threaded));
    P("debug.runtime_state.interpreters_head", offsetof(_Py_DebugOffsets, runtime_state.interpreters_head));
    P("debug.interpreter_state.id", offsetof(_Py_DebugOffsets, interpreter_state.id));
    P("debug.interpreter_state.next", offsetof(_Py_DebugOffsets, interpreter_state.next));
    P("debug.interpreter_state.gc", offsetof(_Py_DebugOffsets, interpreter_state.gc));
    P("debug.interpreter_state.ceval_gil", offsetof(_Py_DebugOffsets, interpreter_state.ceval_gil));
    P("debug.interpreter_state.gil_runtime_state", offsetof(_Py_DebugOffsets, interpreter_state.gil_runtime_state));
    P("debug.interpreter_state.gil_runtime_state_locked",
      offsetof(_Py_DebugOffsets, interpreter_state.gil_runtime_state_locked));
    P("debug.interpreter_state.gil_runtime_state_holder",
      offsetof(_Py_DebugOffsets, interpreter_state.gil_runtime_state_holder));
    P("debug.thread_state.thread_id", offsetof(_Py_DebugOffsets, thread_state.thread_id));
    P("debug.thread_state.native_thread_id", offsetof(_Py_DebugOffsets, thread_state.native_thread_id));
    P("debug.gc.collecting", offsetof(_Py_DebugOffsets, gc.collecting));
#endif
    return 0;
}
