"""PNG figures without matplotlib: class-by-row sample grids and loss curves."""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vpntk_jax.errors import DataError

PAD = 2
# White separators read well around both dark-background (MNIST-like) and photo images.
BACKGROUND = 255


def sample_grid(
  images: np.ndarray, labels: np.ndarray, num_classes: int, per_class: int = 10
) -> np.ndarray:
  """Tiles the first `per_class` images of each class, one class per row.

  Returns a uint8 (rows*(H+2)+2, cols*(W+2)+2, C) image with 2px padding; cells of
  classes with fewer examples stay background.
  """
  images, labels = np.asarray(images), np.asarray(labels)
  if images.dtype != np.uint8 or images.ndim != 4:
    raise DataError(f"images must be uint8 NHWC, got {images.dtype} {images.shape}")
  if labels.shape != images.shape[:1]:
    raise DataError(f"labels must have shape ({images.shape[0]},), got {labels.shape}")
  _, h, w, c = images.shape
  grid = np.full(
    (num_classes * (h + PAD) + PAD, per_class * (w + PAD) + PAD, c), BACKGROUND, np.uint8
  )
  for row in range(num_classes):
    for col, index in enumerate(np.flatnonzero(labels == row)[:per_class]):
      top, left = PAD + row * (h + PAD), PAD + col * (w + PAD)
      grid[top : top + h, left : left + w] = images[index]
  return grid


def _to_pil(image: np.ndarray) -> Image.Image:
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise DataError(f"image must be uint8, got {image.dtype}")
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  if image.ndim == 2:
    return Image.fromarray(image, mode="L")
  if image.ndim == 3 and image.shape[-1] in (3, 4):
    return Image.fromarray(image, mode="RGB" if image.shape[-1] == 3 else "RGBA")
  raise DataError(f"image must be HxW, HxWx1, HxWx3 or HxWx4, got shape {image.shape}")


def save_png(path: str | os.PathLike, image: np.ndarray) -> None:
  """Writes `image` as PNG atomically: a temp file in the same directory, then os.replace."""
  pil = _to_pil(image)
  path = os.path.abspath(path)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  # A unique sibling name opened with "xb" (not mkstemp) so the file gets the
  # umask's permissions rather than 0600.
  tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex}"
  try:
    with open(tmp, "xb") as f:
      pil.save(f, format="PNG")
    os.replace(tmp, path)
  except BaseException:
    # A reader must never see a half-written file, and no temp file may be left behind.
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


# Rows at least this tall (pixels) when names are drawn beside them: the default
# bitmap font is about 11 pixels high.
_LABEL_ROW_HEIGHT = 14


def labelled_sample_grid(
  images: np.ndarray, labels: np.ndarray, class_names: Sequence[str], per_class: int = 10,
  title: str | None = None,
) -> np.ndarray:
  """`sample_grid` with each row's class name written to its left (and `title` above).

  Small images are enlarged by a whole factor (nearest neighbour) until a row is
  tall enough for a line of text; the names column is as wide as the longest name.
  """
  names = [str(n) for n in class_names]
  if not names:
    raise DataError("class_names must name at least one class")
  grid = sample_grid(images, labels, len(names), per_class)
  cell = images.shape[1] + PAD
  scale = -(-_LABEL_ROW_HEIGHT // cell)  # ceil
  if scale > 1:
    grid = np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)
  font = ImageFont.load_default()
  probe = ImageDraw.Draw(Image.new("L", (1, 1)))
  widths = [probe.textbbox((0, 0), n, font=font)[2] for n in names]
  margin = max(widths) + 2 * PAD + 4
  canvas = Image.new("L" if grid.shape[-1] == 1 else "RGB",
                     (grid.shape[1] + margin, grid.shape[0]), BACKGROUND if grid.shape[-1] == 1
                     else (BACKGROUND,) * 3)
  canvas.paste(_to_pil(grid), (margin, 0))
  draw = ImageDraw.Draw(canvas)
  ink = 0 if grid.shape[-1] == 1 else (0, 0, 0)
  for row, name in enumerate(names):
    top, bottom = probe.textbbox((0, 0), name, font=font)[1::2]
    middle = (PAD + row * cell + (cell - PAD) / 2) * scale
    draw.text((PAD + 2, middle - (top + bottom) / 2), name, fill=ink, font=font)
  if title:
    titled = Image.new(canvas.mode, (canvas.width, canvas.height + _LABEL_ROW_HEIGHT + PAD),
                       BACKGROUND if canvas.mode == "L" else (BACKGROUND,) * 3)
    titled.paste(canvas, (0, _LABEL_ROW_HEIGHT + PAD))
    ImageDraw.Draw(titled).text((PAD + 2, PAD), title, fill=ink, font=font)
    canvas = titled
  out = np.asarray(canvas)
  return out[..., None] if out.ndim == 2 else out


def save_sample_grid(
  path: str | os.PathLike,
  images: np.ndarray,
  labels: np.ndarray,
  num_classes: int,
  per_class: int = 10,
  class_names: Sequence[str] | None = None,
) -> None:
  """Saves the sample grid as a PNG: with the class names beside the rows where they
  are known (`labelled_sample_grid`), else unlabelled (`sample_grid`)."""
  if class_names is not None and len(class_names) == num_classes:
    save_png(path, labelled_sample_grid(images, labels, class_names, per_class))
  else:
    save_png(path, sample_grid(images, labels, num_classes, per_class))


# Fewer usable (positive, finite) points than this are listed as text, not plotted.
_MIN_CURVE_POINTS = 3


def _format_value(value: float) -> str:
  return f"{value:.4g}"


def render_loss_curve(
  steps: Sequence[float], losses: Sequence[float], *, width: int = 640, height: int = 400
) -> np.ndarray:
  """Draws log10(loss) against step as an RGB uint8 image; non-positive losses are skipped.
  With fewer than three usable points the image lists them as text instead."""
  steps = np.asarray(steps, np.float64).reshape(-1)
  losses = np.asarray(losses, np.float64).reshape(-1)
  if steps.shape != losses.shape:
    raise DataError(f"steps and losses differ in length: {steps.size} vs {losses.size}")
  keep = np.isfinite(steps) & np.isfinite(losses) & (losses > 0)
  steps, logs = steps[keep], np.log10(losses[keep])

  image = Image.new("RGB", (width, height), "white")
  draw = ImageDraw.Draw(image)
  font = ImageFont.load_default()
  left, right, top, bottom = 80, width - 20, 30, height - 40
  if 0 < steps.size < _MIN_CURVE_POINTS:
    # One or two logged steps make no curve (and a log axis through them says
    # nothing): write the values down instead.
    order = np.argsort(steps, kind="stable")
    lines = [f"Training loss: only {steps.size} logged step{'s' * (steps.size > 1)}, "
             f"too few for a curve"] + [
             f"step {_format_value(steps[i])}: loss {_format_value(10.0 ** logs[i])}"
             for i in order]
    for k, line in enumerate(lines):
      draw.text((left, top + 20 + 24 * k), line, fill="black", font=font)
    return np.asarray(image)[:min(height, top + 30 + 24 * len(lines))]
  draw.text((left, 8), "log10(loss) vs step", fill="black", font=font)
  draw.line([(left, top), (left, bottom), (right, bottom)], fill="black", width=1)
  if steps.size == 0:
    draw.text((left + 10, top + 10), "no positive finite losses", fill="red", font=font)
    return np.asarray(image)

  # Degenerate ranges (one point, flat curve) get a unit span so the plot stays centred.
  s_lo, s_hi = float(steps.min()), float(steps.max())
  l_lo, l_hi = float(logs.min()), float(logs.max())
  s_span = s_hi - s_lo or 1.0
  if l_hi == l_lo:
    l_lo, l_hi = l_lo - 0.5, l_hi + 0.5

  def to_xy(step: float, log: float) -> tuple[float, float]:
    x = left + (step - s_lo) / s_span * (right - left)
    y = bottom - (log - l_lo) / (l_hi - l_lo) * (bottom - top)
    return x, y

  order = np.argsort(steps, kind="stable")
  points = [to_xy(s, v) for s, v in zip(steps[order], logs[order])]
  draw.line(points, fill="blue", width=2)

  # Min/max labels in loss units (not log units), which is what one wants to read off.
  i_min, i_max = int(np.argmin(logs)), int(np.argmax(logs))
  for log in (logs[i_min], logs[i_max]):
    _, y = to_xy(s_lo, float(log))
    draw.line([(left - 4, y), (left, y)], fill="black")
    draw.text((4, y - 6), _format_value(10.0 ** float(log)), fill="black", font=font)
  draw.text((left, bottom + 6), _format_value(s_lo), fill="black", font=font)
  s_label = _format_value(s_hi)
  draw.text((right - 6 * len(s_label), bottom + 6), s_label, fill="black", font=font)
  draw.text(((left + right) // 2 - 12, bottom + 20), "step", fill="black", font=font)
  return np.asarray(image)


def save_loss_curve(
  path: str | os.PathLike, steps: Sequence[float], losses: Sequence[float]
) -> None:
  """Saves a PNG line plot of log10(loss) against step, labelled with min/max loss."""
  save_png(path, render_loss_curve(steps, losses))


# Line colours of `render_series`, one per series in order (then repeated).
SERIES_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
                  "#e377c2", "#17becf")


def render_series(
  series: dict[str, tuple[Sequence[float], Sequence[float], Sequence[float]]],
  *,
  title: str,
  x_label: str,
  y_label: str,
  log_x: bool = False,
  width: int = 640,
  height: int = 400,
) -> np.ndarray:
  """Draws named series of (x, mean, std) points as lines with +-std error bars and a
  legend; returns an RGB uint8 image. A NaN std draws no bar; NaN means are skipped."""
  image = Image.new("RGB", (width, height), "white")
  draw = ImageDraw.Draw(image)
  font = ImageFont.load_default()
  left, right, top, bottom = 80, width - 150, 30, height - 40
  draw.text((left, 8), title, fill="black", font=font)
  draw.line([(left, top), (left, bottom), (right, bottom)], fill="black", width=1)
  points = {}
  for name, (xs, means, stds) in series.items():
    xs, means, stds = (np.asarray(v, np.float64).reshape(-1) for v in (xs, means, stds))
    if not xs.shape == means.shape == stds.shape:
      raise DataError(f"series {name!r}: x, mean and std differ in length")
    keep = np.isfinite(xs) & np.isfinite(means) & (xs > 0 if log_x else True)
    points[name] = (xs[keep], means[keep], np.where(np.isfinite(stds[keep]), stds[keep], 0.0))
  shown = [p for p in points.values() if p[0].size]
  if not shown:
    draw.text((left + 10, top + 10), "nothing to plot", fill="red", font=font)
    return np.asarray(image)

  def scale_x(x):
    return np.log10(x) if log_x else x

  xs = np.concatenate([scale_x(p[0]) for p in shown])
  lows = np.concatenate([p[1] - p[2] for p in shown])
  highs = np.concatenate([p[1] + p[2] for p in shown])
  x_lo, x_hi = float(xs.min()), float(xs.max())
  y_lo, y_hi = float(lows.min()), float(highs.max())
  # Degenerate ranges (one x, flat values) get a unit span, as in the loss curve.
  if x_hi == x_lo:
    x_lo, x_hi = x_lo - 0.5, x_hi + 0.5
  if y_hi == y_lo:
    y_lo, y_hi = y_lo - 0.5, y_hi + 0.5
  # A margin inside the axes so end points and bars do not sit on them.
  x_pad, y_pad = 0.05 * (x_hi - x_lo), 0.05 * (y_hi - y_lo)
  x_lo, x_hi, y_lo, y_hi = x_lo - x_pad, x_hi + x_pad, y_lo - y_pad, y_hi + y_pad

  def to_xy(x: float, y: float) -> tuple[float, float]:
    return (left + (scale_x(x) - x_lo) / (x_hi - x_lo) * (right - left),
            bottom - (y - y_lo) / (y_hi - y_lo) * (bottom - top))

  for i, (name, (px, pm, ps)) in enumerate(points.items()):
    colour = SERIES_COLOURS[i % len(SERIES_COLOURS)]
    order = np.argsort(px, kind="stable")
    xy = [to_xy(x, m) for x, m in zip(px[order], pm[order])]
    if len(xy) > 1:
      draw.line(xy, fill=colour, width=2)
    for x, m, s in zip(px[order], pm[order], ps[order]):
      cx, cy = to_xy(x, m)
      draw.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=colour)
      if s > 0:
        _, y_top = to_xy(x, m + s)
        _, y_bottom = to_xy(x, m - s)
        draw.line([(cx, y_top), (cx, y_bottom)], fill=colour, width=1)
        draw.line([(cx - 4, y_top), (cx + 4, y_top)], fill=colour, width=1)
        draw.line([(cx - 4, y_bottom), (cx + 4, y_bottom)], fill=colour, width=1)
    legend_y = top + 14 * i
    draw.line([(right + 15, legend_y + 6), (right + 35, legend_y + 6)], fill=colour, width=3)
    draw.text((right + 40, legend_y), name, fill="black", font=font)

  # Tick labels at every distinct x (in data units) and at the y range's ends.
  for x in np.unique(np.concatenate([p[0] for p in shown])):
    cx, _ = to_xy(float(x), y_lo)
    draw.line([(cx, bottom), (cx, bottom + 4)], fill="black")
    draw.text((cx - 8, bottom + 6), _format_value(float(x)), fill="black", font=font)
  for y in (y_lo + y_pad, y_hi - y_pad):
    _, cy = to_xy(10 ** x_lo if log_x else x_lo, y)
    draw.line([(left - 4, cy), (left, cy)], fill="black")
    draw.text((4, cy - 6), _format_value(y), fill="black", font=font)
  draw.text(((left + right) // 2 - 3 * len(x_label), bottom + 20),
            x_label + (" (log scale)" if log_x else ""), fill="black", font=font)
  draw.text((4, top - 14), y_label, fill="black", font=font)
  return np.asarray(image)
