ip netns add dari-hub
ip -n dari-hub link set lo up
ip -n dari-hub link add lan0 mtu 1400 type bridge
ip -n dari-hub addr add 172.31.0.1/24 dev lan0
ip -n dari-hub link set lan0 up
ip netns add dari-myk8s-control-plane
ip -n dari-myk8s-control-plane link set lo up
ip -n dari-hub link add vmyk8s-8b1e5d73 mtu 1400 type veth peer name eth0 mtu 1400 netns dari-myk8s-control-plane
ip -n dari-hub link set vmyk8s-8b1e5d73 master lan0
ip -n dari-hub link set vmyk8s-8b1e5d73 up
ip -n dari-myk8s-control-plane addr add 172.31.0.10/24 dev eth0
ip -n dari-myk8s-control-plane link set eth0 up
ip -n dari-myk8s-control-plane route add default via 172.31.0.1
ip netns exec dari-myk8s-control-plane sysctl -w net.ipv4.ip_forward=1
ip netns add dari-myk8s-worker
ip -n dari-myk8s-worker link set lo up
ip -n dari-hub link add vmyk8s-worker mtu 1400 type veth peer name eth0 mtu 1400 netns dari-myk8s-worker
ip -n dari-hub link set vmyk8s-worker master lan0
ip -n dari-hub link set vmyk8s-worker up
ip -n dari-myk8s-worker addr add 172.31.0.11/24 dev eth0
ip -n dari-myk8s-worker link set eth0 up
ip -n dari-myk8s-worker route add default via 172.31.0.1
ip netns exec dari-myk8s-worker sysctl -w net.ipv4.ip_forward=1
ip netns add dari-myk8s-worker2
ip -n dari-myk8s-worker2 link set lo up
ip -n dari-hub link add vmyk8s-worker2 mtu 1400 type veth peer name eth0 mtu 1400 netns dari-myk8s-worker2
ip -n dari-hub link set vmyk8s-worker2 master lan0
ip -n dari-hub link set vmyk8s-worker2 up
ip -n dari-myk8s-worker2 addr add 172.31.0.12/24 dev eth0
ip -n dari-myk8s-worker2 link set eth0 up
ip -n dari-myk8s-worker2 route add default via 172.31.0.1
ip netns exec dari-myk8s-worker2 sysctl -w net.ipv4.ip_forward=1
ip netns add dari-myk8s-worker3
ip -n dari-myk8s-worker3 link set lo up
ip -n dari-hub link add vmyk8s-worker3 mtu 1400 type veth peer name eth0 mtu 1400 netns dari-myk8s-worker3
ip -n dari-hub link set vmyk8s-worker3 master lan0
ip -n dari-hub link set vmyk8s-worker3 up
ip -n dari-myk8s-worker3 addr add 172.31.0.13/24 dev eth0
ip -n dari-myk8s-worker3 link set eth0 up
ip -n dari-myk8s-worker3 route add default via 172.31.0.1
ip netns exec dari-myk8s-worker3 sysctl -w net.ipv4.ip_forward=1
