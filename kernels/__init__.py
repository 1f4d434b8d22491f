"""rankflow kernels: fused Triton kernels for the ops that dominate training, each with a PyTorch
reference (the CPU path and the test oracle). kernels.dispatch chooses between them in one place."""
