"""File names of the run directory contract (see `vpntk_jax.pipeline`)."""

CONFIG = "config.json"
PRIVACY = "privacy.json"
RELEASE = "release.npz"
CHECKPOINTS = "checkpoints"
TRAIN_LOG = "train_log.csv"
SYNTHETIC = "synthetic.npz"
SAMPLES = "samples.png"
LOSS_PNG = "loss.png"
METRICS = "metrics.json"
PUBLIC = "public.json"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
SELECTION = "selection.json"
SELECTION_CHECKPOINTS = "best"
# The diffusion family: public pretraining and the semantic query's selection.
PRETRAIN_CHECKPOINTS = "pretrain_checkpoints"
DP_SGD_LOG = "dp_sgd_log.csv"
QUERY_SELECTION = "query_selection.json"
# What the operator reads: every message of the run, and its CSV logs' scalars
# as TensorBoard event files; `vpntk export`'s default place.
LOG_TXT = "log.txt"
TENSORBOARD = "tensorboard"
DPIMAGEBENCH = "dpimagebench"

# Every name a run writes into its directory: --force replaces only a directory
# that holds nothing else, so it never deletes a file the library did not make.
RUN_DIR_NAMES = frozenset({CONFIG, PRIVACY, RELEASE, CHECKPOINTS, TRAIN_LOG, SYNTHETIC, SAMPLES,
                           LOSS_PNG, METRICS, PUBLIC, REPORT_MD, REPORT_HTML, SELECTION,
                           SELECTION_CHECKPOINTS, PRETRAIN_CHECKPOINTS, DP_SGD_LOG,
                           QUERY_SELECTION, LOG_TXT, TENSORBOARD, DPIMAGEBENCH})
