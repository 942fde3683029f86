"""Image denoising: the bidirectional EBT and its Diffusion Transformer baseline (docs/reference.md §8).

    config.py      ImageRunConfig and the denoise-tiny / dit-tiny presets
    data.py        embedded photo crops and digits, user folders / files / arrays
    models.py      patchify, EnergyNet (bidirectional EBT energy), DiTNet
    diffusion.py   DDPM schedule, DiT loss, DDIM sampler
    denoisers.py   EBTDenoiser / DiTDenoiser objectives, checkpoint loading
    evaluate.py    PSNR / MSE / NFE;  report.py: the EBT-vs-DiT comparison, grid and plot
    task.py        the trainer task, registered as "denoise" (the commands are in ebt/cli/denoise.py)
"""
