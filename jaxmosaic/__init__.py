"""jaxmosaic: classic image techniques as pure, jitted JAX functions.

Images are float32 in [0, 1], channels last (HWC, or NHWC for a batch). Importing the package
reads no file and touches no network; weights load only when asked.
"""

from jaxmosaic._version import __version__
from jaxmosaic.errors import ConfigError, ImageError, JaxmosaicError, UnsafeCheckpointError, WeightsError
from jaxmosaic.image import center_crop, fit_shape, linear_to_srgb, resize, srgb_to_linear
from jaxmosaic.io.images import ImageWarning, load_image, save_gif, save_image
from jaxmosaic.io.checkpoints import load_checkpoint, save_checkpoint
from jaxmosaic.color import luminance, rgb_to_lab, rgb_to_yiq, yiq_to_rgb
from jaxmosaic.filters import Padding, fft_gaussian_blur, gabor_kernel, gaussian_blur, gaussian_kernel1d, separable_blur
from jaxmosaic.search import compress_queries, l2_normalize, match_tiles, svd_compress
from jaxmosaic.assignment import OptimalAssignment, optimal_assignment
from jaxmosaic.losses import content_loss, gram_matrix, gram_targets, style_layer_loss, style_loss, tv_loss
from jaxmosaic.spectrum import (
    periodic_component,
    radial_power_spectrum,
    spectrum_distance,
    spectrum_loss,
    spectrum_projection,
    spectrum_target,
)
from jaxmosaic.clustering import KMeansInit, kmeans, nearest_centers
from jaxmosaic.optimize import Optimizer, minimize
from jaxmosaic.stages import Problem, Solution, solve
from jaxmosaic.vgg import VGG19, VGG19_LAYERS, Pooling, layer_channels, layer_stride, vgg19_features
from jaxmosaic.alexnet import ALEXNET_LAYERS, AlexNet, alexnet_features
from jaxmosaic.weights import load_alexnet, load_vgg19, random_alexnet, random_vgg19
from jaxmosaic.techniques.style import StyleConfig, StyleInputs, keep_colors, style_targets, style_transfer, style_transfer_loss
from jaxmosaic.techniques.texture import (
    TextureConfig,
    TextureInputs,
    match_histograms,
    synthesize_texture,
    texture_loss,
    texture_targets,
)
from jaxmosaic.techniques.hybrid import HybridConfig, HybridInputs, hybrid_fourier, hybrid_loss, hybrid_optimize, seen_from_afar
from jaxmosaic.techniques.vq import (
    VQConfig,
    cluster_images,
    code_histograms,
    compress_image,
    cosine_distances,
    extract_patches,
    train_codebook,
    vq_decode,
    vq_encode,
)
from jaxmosaic.techniques.mosaic import (
    LibraryConfig,
    MosaicConfig,
    assign_tiles,
    build_library,
    color_features,
    colorize,
    gabor_tiles,
    make_mosaic,
)
from jaxmosaic.pictures import distance_preview

__all__ = [
    "__version__",
    "ConfigError",
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
    "Padding",
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
    "MosaicConfig",
    "LibraryConfig",
    "gabor_tiles",
    "color_features",
    "colorize",
    "assign_tiles",
    "optimal_assignment",
    "OptimalAssignment",
    "build_library",
    "make_mosaic",
    "Optimizer",
    "Problem",
    "Solution",
    "minimize",
    "solve",
    "save_checkpoint",
    "load_checkpoint",
    "gram_matrix",
    "gram_targets",
    "content_loss",
    "style_layer_loss",
    "style_loss",
    "tv_loss",
    "StyleConfig",
    "StyleInputs",
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
    "TextureConfig",
    "TextureInputs",
    "texture_targets",
    "texture_loss",
    "match_histograms",
    "synthesize_texture",
    "VQConfig",
    "extract_patches",
    "KMeansInit",
    "kmeans",
    "nearest_centers",
    "vq_encode",
    "vq_decode",
    "code_histograms",
    "cosine_distances",
    "cluster_images",
    "train_codebook",
    "compress_image",
    "HybridConfig",
    "HybridInputs",
    "hybrid_loss",
    "seen_from_afar",
    "hybrid_fourier",
    "hybrid_optimize",
    "distance_preview",
    "VGG19",
    "VGG19_LAYERS",
    "Pooling",
    "layer_channels",
    "layer_stride",
    "vgg19_features",
    "load_vgg19",
    "random_vgg19",
    "AlexNet",
    "ALEXNET_LAYERS",
    "alexnet_features",
    "load_alexnet",
    "random_alexnet",
]
