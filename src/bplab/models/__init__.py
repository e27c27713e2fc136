"""The tutorials' networks (networks), which one each ``model.arch`` builds (architectures), and
loading saved models without running code (safe_load).
"""
