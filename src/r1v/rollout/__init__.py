"""r1v.rollout"""
