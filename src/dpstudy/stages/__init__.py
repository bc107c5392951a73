"""One module per DVC stage. Each is a thin entry point: ``add_arguments(parser)`` declares the
paths dvc.yaml passes, ``run(args)`` reads its params section and calls library functions."""

from . import download, evaluate, plot, profile_dataloader, train_adaptive, train_ddp, train_dp

STAGES = {
    "download": download,
    "profile_dataloader": profile_dataloader,
    "train_dp": train_dp,
    "train_ddp": train_ddp,
    "train_adaptive": train_adaptive,
    "evaluate": evaluate,
    "plot": plot,
}
