"""Evaluation: metrics of expression recognition, and perturbations that test robustness to real scans."""
