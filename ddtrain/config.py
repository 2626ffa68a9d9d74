"""Typed configuration: the dataclass schema (registered in Hydra's ConfigStore) and its defaults.

These dataclasses are the one source of defaults: every key has its type, its default and a one-line
doc here, so a wrong type fails at composition, before any process group exists. The YAML files
under configs/ only choose the group options (configs/train.yaml) and hold what each option sets
differently from these defaults (e.g. configs/optimizer/adamw.yaml: weight_decay 0.01).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf


MODELS = ("mlp", "lenet5", "cnn1d", "resnet20", "resnet18", "resnet50", "alexnet")
DATASETS = ("synthetic", "mnist1d", "mnist", "fashion_mnist", "cifar10", "image_folder")
DISK_DATASETS = ("image_folder",)  # read from disk by DataLoader workers (as is any dataset._target_)
# dataset.augment / dataset.eval_transform ops (ddtrain.data.augment); the random ones are for training only
TRANSFORM_OPS = ("random_resized_crop", "pad_crop", "hflip", "resize", "center_crop")
RANDOM_TRANSFORM_OPS = ("random_resized_crop", "pad_crop", "hflip")
OPTIMIZERS = ("sgd", "adam", "adamw", "lars")
SCHEDULES = ("constant", "cosine", "step")
LR_SCALING = ("linear", "sqrt", "none")
PRECISIONS = ("fp32", "bf16", "fp16")
PLACEMENTS = ("auto", "device", "host")
BACKENDS = ("auto", "nccl", "gloo")
ENGINES = ("ddp", "horovod", "mpi")
# dist.compression each engine supports
COMPRESSIONS = {"ddp": ("none", "fp16", "bf16", "powersgd"), "horovod": ("none", "fp16"), "mpi": ("none",)}


@dataclass
class ModelConfig:
    """Which network to train: a built-in name, or the user's own nn.Module through _target_.

    Keys added to this node (model.width=512 on the command line, or in the user's own
    configs/model/<name>.yaml) are passed to the _target_ as keyword arguments; a built-in model
    refuses them (a typo fails instead of being ignored).
    """

    _target_: Optional[str] = None
    """The user's model: dotted path of an nn.Module class or a function returning one (e.g. mypkg.nets.WideNet); it gets input_shape and num_classes from the dataset when its signature names them. None: the built-in model.name."""
    name: str = "cnn1d"
    """One of mlp, lenet5, cnn1d, resnet20, resnet18, resnet50, alexnet (unused with _target_)."""
    hidden_sizes: List[int] = field(default_factory=lambda: [100, 100])
    """mlp: widths of the hidden layers."""
    channels: int = 25
    """cnn1d: channels of each of its three convolutions."""
    dropout: float = 0.0
    """mlp and alexnet: dropout probability before each hidden linear layer."""
    init_from: str = ""
    """Start from these weights only (fine-tuning: new optimizer and step count): a model.pt, a ddtrain checkpoint or a plain state_dict file (e.g. torchvision's); empty: fresh initialisation."""
    init_strict: bool = True
    """With init_from: every parameter and buffer must match by name and shape; false loads what matches and logs the keys it skipped (a new classifier head)."""
    sync_batchnorm: bool = False
    """resnet20, resnet18, resnet50: BatchNorm statistics over the global batch, not each rank's (SyncBatchNorm; ddp engine)."""


@dataclass
class DatasetConfig:
    """What to train on: held in memory by every rank (the built-in sets) or read from disk by DataLoader workers."""

    name: str = "mnist1d"
    """One of synthetic, mnist1d, mnist, fashion_mnist, cifar10, image_folder (ignored when _target_ is set)."""
    _target_: Optional[str] = None
    """Your own dataset: dotted path of a callable returning torch Datasets (train, test), (train, val, test) or a dict; keys added beside it (dataset.KEY=...) are its arguments."""
    root: str = "data"
    """Folder holding the dataset's files (mnist, fashion_mnist, cifar10, image_folder; passed to a _target_ that takes root); never downloaded."""
    cache_dir: str = "~/.cache/ddtrain"
    """mnist1d: where the generated dataset is cached."""
    num_samples: int = 5000
    """mnist1d: samples generated in all (80% train, 20% test); synthetic: training samples."""
    num_test_samples: int = 1000
    """synthetic: held-out test samples."""
    shape: List[int] = field(default_factory=lambda: [3, 32, 32])
    """synthetic: shape of one sample, e.g. [3, 224, 224] or [784]."""
    num_classes: int = 10
    """synthetic: number of classes; _target_: used when the train Dataset has no num_classes or classes attribute."""
    val_fraction: float = 0.1
    """Share of the training set held out for validation (fixed split_seed); test stays held out. image_folder: its val/ folder instead."""
    split_seed: int = 0
    """Seed of the train/validation split and of synthetic data; independent of train.seed."""
    placement: str = "auto"
    """In-memory datasets: auto | device | host: data on the training device (auto: when it fits in a quarter of free GPU memory) or in (pinned) host memory, batches gathered by DataLoader workers."""
    num_workers: int = 2
    """DataLoader worker processes per rank that read (image_folder, _target_) or gather (host placement) batches; 0: the training process itself."""
    prefetch_factor: int = 2
    """Batches each DataLoader worker prepares ahead."""
    channels: int = 3
    """image_folder: 3 decodes images as RGB, 1 as grayscale."""
    augment: List[str] = field(default_factory=list)
    """image_folder and _target_: training ops, in order, random per (train.seed, epoch, sample): random_resized_crop, pad_crop, hflip, resize, center_crop."""
    eval_transform: List[str] = field(default_factory=list)
    """image_folder and _target_: evaluation ops, in order: resize, center_crop (e.g. [resize, center_crop])."""
    crop_size: int = 0
    """Side of the square random_resized_crop and center_crop make (e.g. 224); pad_crop's too (0: the image's size)."""
    resize_size: int = 0
    """resize: the image's shorter side becomes this many pixels (e.g. 256)."""
    pad: int = 4
    """pad_crop: zero pixels added on each side before the random crop."""
    crop_scale: List[float] = field(default_factory=lambda: [0.08, 1.0])
    """random_resized_crop: range of the crop's area as a fraction of the image's."""
    crop_ratio: List[float] = field(default_factory=lambda: [3 / 4, 4 / 3])
    """random_resized_crop: range of the crop's aspect ratio (width / height)."""
    mean: List[float] = field(default_factory=list)
    """image_folder and _target_: per-channel mean subtracted from the inputs (pixels scaled to [0, 1]); empty: no normalisation."""
    std: List[float] = field(default_factory=list)
    """Per-channel standard deviation the inputs are divided by (with mean)."""


@dataclass
class OptimizerConfig:
    """The optimizer; its learning rate comes from train.lr and train.lr_scaling.

    Keys added to this node are passed to optimizer._target_ (e.g. +optimizer.decoupled_weight_decay=true).
    """

    _target_: Optional[str] = None
    """The user's optimizer class (e.g. torch.optim.RAdam): called with the model's parameter groups, lr = the scaled train.lr and the keys added here. None: the built-in optimizer.name."""
    name: str = "sgd"
    """One of sgd, adam, adamw, lars (unused with _target_)."""
    momentum: float = 0.9
    """sgd and lars: momentum factor."""
    nesterov: bool = False
    """sgd: Nesterov momentum."""
    weight_decay: float = 0.0005
    """L2 penalty (sgd, adam, lars) or decoupled weight decay (adamw)."""
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    """adam and adamw: coefficients of the running averages."""
    eps: float = 1e-8
    """adam and adamw: term added to the denominator."""
    trust_coefficient: float = 0.001
    """lars: eta, the trust ratio coefficient (You et al. 2017)."""


@dataclass
class LossConfig:
    """The training and evaluation loss: cross-entropy on class labels unless _target_ names another.

    Keys added to this node are passed to loss._target_ (e.g. +loss.label_smoothing=0.1).
    """

    _target_: Optional[str] = None
    """Any callable (outputs, targets) -> scalar tensor: a loss class (torch.nn.MSELoss) or a function (torch.nn.functional.huber_loss, mypkg.losses.focal); None: cross-entropy."""
    accuracy: Optional[bool] = None
    """Report accuracy (argmax of the outputs against integer labels)? None: only for cross-entropy and NLL losses, the classification ones."""


@dataclass
class ScheduleConfig:
    """Learning-rate schedule over the run, after an optional gradual warmup."""

    name: str = "cosine"
    """One of constant, cosine, step."""
    warmup_epochs: float = 2.0
    """Linear warmup from the unscaled train.lr to the scaled LR over this many epochs (Goyal et al. 2017)."""
    min_lr_factor: float = 0.0
    """cosine: the LR at the end, as a fraction of the peak LR."""
    milestones: List[float] = field(default_factory=lambda: [0.5, 0.75])
    """step: points where the LR is multiplied by gamma, as fractions of the run."""
    gamma: float = 0.1
    """step: factor applied at each milestone."""


@dataclass
class TrainConfig:
    """Batch sizes, length of the run, learning rate and numerics."""

    global_batch_size: int = 128
    """Samples per optimizer step summed over all ranks and accumulation micro-steps."""
    grad_accum_steps: int = 1
    """Micro-steps per optimizer step; per-rank batch = global / (world_size x grad_accum_steps)."""
    epochs: float = 100.0
    """Length of the run in passes over the training set (used when max_steps is 0)."""
    max_steps: int = 0
    """Length of the run in optimizer steps; 0 means use epochs."""
    lr: float = 0.2
    """Learning rate at train.base_batch_size; scaled by lr_scaling for other batch sizes."""
    base_batch_size: int = 128
    """The global batch size at which train.lr is given."""
    lr_scaling: str = "linear"
    """linear | sqrt | none: scale lr by global_batch_size / base_batch_size (or its square root)."""
    precision: str = "fp32"
    """fp32 | bf16 | fp16 (autocast; fp16 also uses a GradScaler)."""
    grad_clip: float = 0.0
    """Clip the averaged gradient to this global L2 norm; 0 turns clipping off."""
    seed: int = 0
    """Seed of the model initialisation, the data order and dropout."""
    eval_every: int = 0
    """Evaluate on the validation set every N steps; 0 means evals_per_epoch times per epoch."""
    evals_per_epoch: int = 1
    """With eval_every 0: validation passes per epoch of samples."""
    log_every: int = 50
    """Reduce and log loss, accuracy, LR and throughput every N steps."""
    throughput_warmup_steps: int = 10
    """Steps left out of the throughput figures (start-up, allocator warm-up, compilation)."""
    channels_last: bool = False
    """Keep 4-D activations in NHWC layout (faster convolutions on tensor cores)."""
    compile: bool = False
    """torch.compile the model (after the engine wraps it)."""
    cudnn_benchmark: bool = True
    """Let cuDNN time its convolution algorithms on the first steps and keep the fastest."""
    throughput_measure_steps: int = 0
    """Steps after the warm-up that count towards throughput; 0 means all of them."""
    target_accuracy: float = 0.0
    """Record the step, epoch and training time at which validation accuracy first reaches this; 0: no target."""
    target_loss: float = 0.0
    """Record the step, epoch and training time at which the validation loss first falls to this or below (losses without accuracy); 0: no target."""
    time_budget_s: float = 0.0
    """Stop after this many seconds of training (evaluation excluded); 0: no limit."""
    noise_scale: bool = False
    """Measure the gradient noise scale B_simple (McCandlish et al. 2018); cheap, no extra host syncs."""
    stop_on_nan: bool = False
    """A rank whose own loss is NaN/inf fails at once and all ranks stop with its message (one host sync per micro-batch); false: all ranks stop together, status diverged, at the next logged step."""
    stop_at_target: bool = False
    """End the run at the evaluation that first reaches target_accuracy (the schedule keeps its full length)."""
    stop_after_steps: int = 0
    """End the run after this many steps without shortening the schedule (it still spans the whole run); 0: no limit."""


@dataclass
class DistConfig:
    """How ranks talk and how gradients are averaged."""

    backend: str = "auto"
    """auto | nccl | gloo: auto picks nccl with CUDA, gloo on CPU."""
    engine: str = "ddp"
    """ddp (torch DistributedDataParallel) | horovod (hvd.DistributedOptimizer) | mpi (mpi4py Iallreduce buckets)."""
    compression: str = "none"
    """Gradient compression on the wire: none | fp16 | bf16 | powersgd (ddp); none | fp16 (horovod); none (mpi)."""
    timeout_s: float = 300.0
    """Seconds a collective may wait for a peer before the run fails."""
    bucket_cap_mb: float = 25.0
    """Size of the gradient buckets that are allreduced while backward runs."""
    interface: str = ""
    """ddp engine: the network interface (eth0) or subnet (10.0.0.0/24) the ranks use across hosts; empty: chosen (README: several hosts)."""


@dataclass
class CheckpointConfig:
    """Atomic checkpoints in <run_dir>/checkpoints."""

    every_steps: int = 0
    """Save every N optimizer steps and at the end; 0 turns checkpoints off."""
    keep_last: int = 2
    """How many of the newest checkpoints to keep."""
    resume: str = "auto"
    """auto (newest complete checkpoint of this run directory) | never | a checkpoint path."""
    save_model: bool = True
    """Write <run_dir>/model.pt at the end: the final weights and the model config (torch.load(weights_only=True)), for model.init_from and ddtrain-export."""


@dataclass
class LoggingConfig:
    """What rank 0 shows and writes besides metrics.jsonl and summary.json."""

    tensorboard: bool = True
    """Write TensorBoard event files under <run_dir>/tb."""
    progress: bool = True
    """Show a progress bar on rank 0."""
    level: str = "INFO"
    """Python logging level of the console and train.log."""


@dataclass
class SweepConfig:
    """ddtrain-sweep: which global batch sizes to train, on what budget, towards which target."""

    batch_sizes: List[int] = field(default_factory=lambda: [32, 64, 128, 256, 512, 1024, 2048, 4096])
    """Global batch sizes to measure."""
    seeds: List[int] = field(default_factory=lambda: [0])
    """train.seed values; each batch size is trained once per seed."""
    lr_scaling: str = "linear"
    """linear | sqrt | none: how train.lr (given at train.base_batch_size) scales with each batch size."""
    budget: str = "epochs=20"
    """Length of each point: one of epochs=N, steps=N, samples=N, time_s=N."""
    target_metric: str = "val_accuracy"
    """The metric that defines reaching the target: val_accuracy (reach it or more) or val_loss (fall to it or below; for losses without accuracy)."""
    target: float = 0.9
    """Target value of target_metric; time_to_target_s is measured to its first crossing."""
    warmup_steps: int = 5
    """Steps of each point left out of the throughput window."""
    measure_steps: int = 50
    """Steps after the warm-up that form the throughput window."""
    auto_accumulate: bool = False
    """When a per-rank batch does not fit in memory, keep the global batch with more accumulation micro-steps."""
    evals_per_epoch: int = 4
    """Validation passes per epoch of samples (the resolution of steps_to_target); tuned trials use tune_evals."""
    min_steps: int = 0
    """Every point trains at least this many steps (an epochs or samples budget gives large batches few steps)."""
    timing_rounds: int = 3
    """Rounds of the timing pass: each round times every batch size once, in turn, so load drift hits all alike; 0: no pass."""
    timing_steps: int = 20
    """Timed steps per batch size and round (after warmup_steps); time to target = steps to target x step time."""
    mode: str = "measure"
    """measure (train every point towards the target) | predict (the short probe: prediction.json, prediction.png)."""
    tune: bool = False
    """measure: per batch size, search the learning rate (tune_lrs values); steps to target = min over trials."""
    tune_lrs: int = 7
    """tune: learning rates tried per batch size, log-spaced around the lr_scaling rule's value (an odd count includes it)."""
    tune_lr_span: float = 100.0
    """tune: ratio of the largest to the smallest learning rate tried (100: a decade either side of the rule's value)."""
    tune_warmup_epochs: List[float] = field(default_factory=list)
    """tune: schedule.warmup_epochs values tried with every learning rate besides the schedule's own."""
    tune_extend: int = 3
    """tune: learning rates added beyond the grid (one grid step each) while the best trial sits on its edge."""
    tune_evals: int = 100
    """tune and predict: validations per point's budget (eval every budget/tune_evals steps): steps-to-target resolution."""
    probe_batch_size: int = 0
    """predict: the small batch of the probe's learning-rate scan and noise-scale run; 0: the second-smallest of batch_sizes."""
    probe_anchors: int = 1
    """predict: large batch sizes trained from scratch to the target (8x, 2x, ... B_simple) that calibrate B_noise against B_simple."""
    probe_max_samples: float = 0.0
    """predict: training samples the whole probe may process (runs stop when it is spent); 0: no limit."""
    compare_to: str = ""
    """predict: a measured (tuned) sweep directory; the prediction is overlaid on it and the errors printed."""


@dataclass
class TrainJob:
    """The whole configuration of ddtrain-train."""

    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)


# the nodes whose _target_ may take keys the schema does not know (passed on as keyword arguments)
TARGET_NODES = {"model": ModelConfig, "dataset": DatasetConfig, "optimizer": OptimizerConfig, "loss": LossConfig}
def register_configs() -> None:
    """Register the schema in Hydra's ConfigStore; configs/train.yaml starts from it (its defaults and types)."""
    node = OmegaConf.structured(TrainJob)
    for section in TARGET_NODES:
        # open to new keys (model.width=512) while the declared ones keep their types
        OmegaConf.set_struct(node[section], False)
    ConfigStore.instance().store(name="train_schema", node=node)


def config_dir() -> Path:
    """The folder holding train.yaml: packaged with ddtrain, or configs/ of a source checkout."""
    packaged = Path(__file__).resolve().parent / "configs"
    if (packaged / "train.yaml").is_file():
        return packaged
    return Path(__file__).resolve().parent.parent / "configs"
