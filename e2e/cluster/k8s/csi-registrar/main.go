// csi-registrar: registers a CSI node plugin that runs on the host with kubelet, as
// node-driver-registrar does (kubelet's plugin watcher finds this socket in its plugins_registry
// dir, asks GetInfo for the driver name and the CSI endpoint, and reports back). The cluster e2e
// runs podvisor's CSI node plugin as a host process, so it needs this small piece; the upstream
// sidecar is not available from the Go module proxy.
package main

import (
	"context"
	"flag"
	"log"
	"net"
	"os"
	"os/signal"
	"syscall"

	"google.golang.org/grpc"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

type registrar struct {
	registerapi.UnimplementedRegistrationServer
	driver   string
	endpoint string
}

func (r *registrar) GetInfo(context.Context, *registerapi.InfoRequest) (*registerapi.PluginInfo, error) {
	return &registerapi.PluginInfo{Type: registerapi.CSIPlugin, Name: r.driver, Endpoint: r.endpoint, SupportedVersions: []string{"1.0.0"}}, nil
}

func (r *registrar) NotifyRegistrationStatus(_ context.Context, s *registerapi.RegistrationStatus) (*registerapi.RegistrationStatusResponse, error) {
	if s.PluginRegistered {
		log.Printf("kubelet registered %s (%s)", r.driver, r.endpoint)
	} else {
		log.Printf("kubelet refused %s: %s", r.driver, s.Error)
	}
	return &registerapi.RegistrationStatusResponse{}, nil
}

func main() {
	driver := flag.String("driver-name", "", "CSI driver name")
	endpoint := flag.String("csi-endpoint", "", "path of the plugin's CSI socket, as kubelet reaches it")
	socket := flag.String("registration-socket", "", "socket to serve in kubelet's plugins_registry dir")
	flag.Parse()
	if *driver == "" || *endpoint == "" || *socket == "" {
		log.Fatal("--driver-name, --csi-endpoint and --registration-socket are required")
	}
	_ = os.Remove(*socket)
	l, err := net.Listen("unix", *socket)
	if err != nil {
		log.Fatal(err)
	}
	s := grpc.NewServer()
	registerapi.RegisterRegistrationServer(s, &registrar{driver: *driver, endpoint: *endpoint})
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-sig
		s.Stop()
	}()
	if err := s.Serve(l); err != nil {
		log.Print(err)
	}
	_ = os.Remove(*socket)
}
