"""Past one machine: evaluation (and search) spread over a Ray cluster.

- cluster: connecting to Ray (start or join a local instance, or an address),
  what each actor is given (resources, environment), and Ray's errors sorted
  into "a worker was lost" and "a task failed";
- pool: a pool of actors, each loading its engines once, that hands out work,
  re-runs what a lost actor had in flight on the others, and replaces it;
- cache: the call cache served to every worker by one actor on the driver's
  machine (one SQLite writer, reachable from every node);
- workers: what eval and search share: how many actors, of what size, with
  the cache server and the pool around them;
- evaluate: `ttsc eval --ray`, the same per-item results file and figures as
  `runtime/eval.py`, with inputs run on the actors.

Ray is an optional extra (`pip install "ttsc[ray]"`); nothing here imports it
until a Ray run starts.
"""
