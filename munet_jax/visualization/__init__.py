"""Pictures of segmentations and of the MU-Layer: overlays, motion colour coding, IoU plots.

Pure numpy/OpenCV: nothing here imports JAX or TensorFlow.
"""

from munet_jax.visualization.motion import (colour_wheel, flow_to_colour, greyscale, heatmap, heatmap_over_image,
                                            upsample)
from munet_jax.visualization.overlay import colour_ids, grid, inner_boundary, overlay_masks, titled
from munet_jax.visualization.plots import PlotArea, Series, iou_over_time_plot

__all__ = [
    "PlotArea", "Series", "colour_ids", "colour_wheel", "flow_to_colour", "greyscale", "grid", "heatmap",
    "heatmap_over_image", "inner_boundary", "iou_over_time_plot", "overlay_masks", "titled", "upsample",
]
