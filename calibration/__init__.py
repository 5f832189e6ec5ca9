"""int8 calibration sets from real images (data.py) and the int8-vs-fp32 quality report
(quality.py), for `vqrt build --precision int8 --calibration-data`. Build side: imports torch."""
