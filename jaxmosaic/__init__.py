"""jaxmosaic: classic image techniques as pure, jitted JAX functions.

Images are float32 in [0, 1], channels last (HWC, or NHWC for a batch). Importing the package
reads no file and touches no network; weights load only when asked.
"""

__version__ = "0.1.0"

from jaxmosaic.errors import ImageError, JaxmosaicError, UnsafeCheckpointError, WeightsError
from jaxmosaic.image import (
    ImageWarning,
    center_crop,
    fit_shape,
    linear_to_srgb,
    load_image,
    resize,
    save_gif,
    save_image,
    srgb_to_linear,
)
from jaxmosaic.color import luminance, rgb_to_lab, rgb_to_yiq, yiq_to_rgb
from jaxmosaic.filters import fft_gaussian_blur, gabor_kernel, gaussian_blur, gaussian_kernel1d, separable_blur
from jaxmosaic.search import compress_queries, l2_normalize, match_tiles, svd_compress
from jaxmosaic.techniques.mosaic import assign_tiles, color_features, colorize, gabor_tiles, make_mosaic
from jaxmosaic.checkpoint import load_checkpoint, save_checkpoint
from jaxmosaic.losses import content_loss, gram_matrix, style_layer_loss, style_loss, tv_loss
from jaxmosaic.optimize import minimize
from jaxmosaic.techniques.style import keep_colors, style_targets, style_transfer, style_transfer_loss
from jaxmosaic.spectrum import (
    periodic_component,
    radial_power_spectrum,
    spectrum_distance,
    spectrum_loss,
    spectrum_projection,
    spectrum_target,
)
from jaxmosaic.techniques.texture import match_histograms, synthesize_texture, texture_loss, texture_targets
from jaxmosaic.kmeans import kmeans, nearest_centers
from jaxmosaic.techniques.vq import (
    cluster_images,
    code_histograms,
    cosine_distances,
    extract_patches,
    vq_decode,
    vq_encode,
)
from jaxmosaic.techniques.hybrid import (
    distance_preview,
    hybrid_fourier,
    hybrid_loss,
    hybrid_optimize,
    seen_from_afar,
)
from jaxmosaic.vgg import VGG19, VGG19_LAYERS, layer_channels, layer_stride, vgg19_features
from jaxmosaic.weights import load_vgg19, random_vgg19

__all__ = [
    "__version__",
    "ImageError",
    "ImageWarning",
    "JaxmosaicError",
    "UnsafeCheckpointError",
    "WeightsError",
    "load_image",
    "save_image",
    "save_gif",
    "resize",
    "center_crop",
    "fit_shape",
    "srgb_to_linear",
    "linear_to_srgb",
    "gaussian_kernel1d",
    "separable_blur",
    "gaussian_blur",
    "fft_gaussian_blur",
    "gabor_kernel",
    "rgb_to_lab",
    "rgb_to_yiq",
    "yiq_to_rgb",
    "luminance",
    "l2_normalize",
    "svd_compress",
    "compress_queries",
    "match_tiles",
    "gabor_tiles",
    "color_features",
    "colorize",
    "assign_tiles",
    "make_mosaic",
    "minimize",
    "save_checkpoint",
    "load_checkpoint",
    "gram_matrix",
    "content_loss",
    "style_layer_loss",
    "style_loss",
    "tv_loss",
    "style_targets",
    "style_transfer_loss",
    "keep_colors",
    "style_transfer",
    "spectrum_projection",
    "spectrum_loss",
    "spectrum_distance",
    "periodic_component",
    "spectrum_target",
    "radial_power_spectrum",
    "texture_targets",
    "texture_loss",
    "match_histograms",
    "synthesize_texture",
    "extract_patches",
    "kmeans",
    "nearest_centers",
    "vq_encode",
    "vq_decode",
    "code_histograms",
    "cosine_distances",
    "cluster_images",
    "hybrid_loss",
    "seen_from_afar",
    "hybrid_fourier",
    "hybrid_optimize",
    "distance_preview",
    "VGG19",
    "VGG19_LAYERS",
    "layer_channels",
    "layer_stride",
    "vgg19_features",
    "load_vgg19",
    "random_vgg19",
]
