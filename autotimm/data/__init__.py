"""Data in: folders, CSV files, arrays or built-in datasets, split, checked and transformed for a timm backbone.

Names are imported on first use, so ``autotimm.data.images`` loads without torch.
"""

from typing import TYPE_CHECKING

from autotimm._lazy import lazy_exports

if TYPE_CHECKING:  # for type checkers and the API docs; at run time names load lazily
    from autotimm.data.builtin import list_builtin_datasets, load_builtin_dataset
    from autotimm.data.csv_source import read_csv_files
    from autotimm.data.datamodule import ImageDataModule
    from autotimm.data.dataset import ImageDataset
    from autotimm.data.images import (
        IMAGE_EXTENSIONS,
        ImageTooLargeError,
        array_to_image,
        check_images,
        decode_image,
        list_image_files,
        load_image,
    )
    from autotimm.data.loaders import default_num_workers, make_loader
    from autotimm.data.sampling import balanced_class_weights, class_counts, sample_weights
    from autotimm.data.sources import SampleTable, SourceData, read_arrays, read_builtin, read_folder
    from autotimm.data.splits import SPLIT_FILE_NAME, resolve_splits, stratified_split
    from autotimm.data.synthetic import make_synthetic_dataset
    from autotimm.data.transforms import (
        AUGMENTATION_PRESETS,
        build_eval_transform,
        build_train_transform,
        list_augmentation_presets,
        make_data_config,
        resolve_augmentation,
    )

__getattr__, __dir__ = lazy_exports(globals())

__all__ = [
    "AUGMENTATION_PRESETS",
    "IMAGE_EXTENSIONS",
    "SPLIT_FILE_NAME",
    "ImageDataModule",
    "ImageDataset",
    "ImageTooLargeError",
    "SampleTable",
    "SourceData",
    "array_to_image",
    "balanced_class_weights",
    "build_eval_transform",
    "build_train_transform",
    "check_images",
    "class_counts",
    "decode_image",
    "default_num_workers",
    "list_augmentation_presets",
    "list_builtin_datasets",
    "list_image_files",
    "load_builtin_dataset",
    "load_image",
    "make_data_config",
    "make_loader",
    "make_synthetic_dataset",
    "read_arrays",
    "read_builtin",
    "read_csv_files",
    "read_folder",
    "resolve_augmentation",
    "resolve_splits",
    "sample_weights",
    "stratified_split",
]
