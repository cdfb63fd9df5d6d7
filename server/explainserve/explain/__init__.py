"""Attribution methods: perturbation (Occlusion, LIME, KernelSHAP, Sobol) and gradient based."""
