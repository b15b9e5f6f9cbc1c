"""procsched.apply() with the GlobalDefs fields in argv[1] (JSON); prints, as JSON, what it
did and what the process (and a child it forks) then runs with."""
import json
import os
import resource
import subprocess
import sys

from vrrpd.config.model import GlobalDefs
from vrrpd.ops import procsched

g = GlobalDefs(**json.loads(sys.argv[1]))
done = procsched.apply(g)
child = subprocess.run([sys.executable, "-c",
    "import os; print(os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0))"],
    capture_output=True, text=True).stdout.split()
print(json.dumps({"done": done, "policy": os.sched_getscheduler(0),
                  "rtprio": os.sched_getparam(0).sched_priority,
                  "nice": os.getpriority(os.PRIO_PROCESS, 0),
                  "rttime": resource.getrlimit(resource.RLIMIT_RTTIME),
                  "affinity": sorted(os.sched_getaffinity(0)),
                  "child": [int(x) for x in child],
                  "locked_kb": int([line.split()[1] for line in open("/proc/self/status")
                                    if line.startswith("VmLck")][0])}))
procsched.release()
