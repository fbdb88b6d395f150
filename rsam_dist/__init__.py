"""rsam-dist: the Recurrent Soft Attention Model trained with Ray Train and swept with Ray Tune.

The library's entry points (the CLI, `rsam_dist.cli`, is a thin layer over them):
    rsam_dist.config.load_config      YAML + overrides -> Config
    rsam_dist.model.RSAM              the model
    rsam_dist.training.fit            the Ray-agnostic training loop
    rsam_dist.ray_train.train_on_ray  fit on Ray Train workers
    rsam_dist.sweep.run_sweep         a sweep on Ray Tune
"""

__version__ = "0.1.0"
