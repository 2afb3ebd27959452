"""Sampling: the Euler/CFG loop (flow), the keyframe and shot samplers, batch jobs, movies and storyboards."""
