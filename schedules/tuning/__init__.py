"""MetaSchedule tuning, seeded with the default schedules, measured on the host or on phones.

* `driver`    the driver (`tune`, `TuningConfig`); ``mdl-tvm tune``
* `tasks`     tasks from the compile pipeline's graph before lowering, trial budgets
* `seed`      the default schedule of each task, measured and recorded first
* `measure`   builders and runners: host, RPC tracker (phones)
* `progress`  per-task reports, progress lines, the measure callback that records
* `verify`    the whole-model check that keeps only tasks that made the model faster

Above the compiler in the layer order: it imports `mdl_tvm.compiler` and `deploy`.
"""

from mdl_tvm.core.lazy import lazy_exports

_EXPORTS = {"tune": "schedules.tuning.driver", "TuningConfig": "schedules.tuning.driver"}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
