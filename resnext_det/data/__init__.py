"""resnext_det.data: COCO split helpers and file checks (coco), the synthetic demo set
(synthetic), and a checked COCO-format reader (coco_json)."""
from .coco import (MissingDatasetFiles, MissingFile, check_dataset_files, coco_split_names,
                   datasets_root, register_coco_splits, verify_dataset_files)
from .synthetic import make_synthetic_coco, register_synthetic_coco, synthetic_dataset_names
