"""LiDAR sources and bird's-eye-view maps, usable without the runtime.

Readers (each returns `LidarScan`, whose `as_payload()` is the frame data every LiDAR node emits):
`kitti` (.bin), `nuscenes` (.pcd.bin), `npy`, `open3d_io` (.pcd/.ply), `sequence` (a directory or
glob as one sequence), Velodyne packets (`velodyne_models`, `velodyne_decode`, `velodyne_encode`,
`rotation`, `velodyne_pcap`, `velodyne_udp`), synthetic race-track scans (`synthetic_track`).
BEV rasterisation: `bev` (numpy), `bev_torch`, `bev_cupy`, and the temporal stack `bev_stack`.
The node kinds live in `sensors.lidar.nodes`; importing this package does not import them.
"""
