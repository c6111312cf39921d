// k8s-stream: Kubernetes' own streaming client (k8s.io/client-go remotecommand and
// portforward, as kubelet's clients and kubectl use them) for podvisor's tests. It dials a
// streaming URL that podvisor's Exec/Attach/PortForward RPC returned and prints one JSON line
// with what happened, so a TypeScript test can assert on it.
//
//	k8s-stream exec|attach <url> [-tty] [-stdin] [-stderr] [-transport spdy|websocket] [-resize WxH]
//	    stdin from this process's stdin; prints {"stdout","stderr","error","exitCode"}
//	k8s-stream portforward <url> <remotePort>
//	    listens on a free local port, prints {"localPort":N}, forwards until stdin closes
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/tools/remotecommand"
	"k8s.io/client-go/transport/spdy"
	"k8s.io/client-go/util/exec"
)

type result struct {
	Stdout   string `json:"stdout"`
	Stderr   string `json:"stderr"`
	Error    string `json:"error,omitempty"`
	ExitCode int    `json:"exitCode"`
}

type sizes struct {
	first *remotecommand.TerminalSize
	sent  bool
}

func (s *sizes) Next() *remotecommand.TerminalSize {
	if s.sent || s.first == nil {
		select {} // no more resizes: block as a terminal that keeps its size would
	}
	s.sent = true
	return s.first
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(2)
}

func main() {
	if len(os.Args) < 3 {
		fail(errors.New("usage: k8s-stream exec|attach|portforward <url> ..."))
	}
	mode, raw := os.Args[1], os.Args[2]
	u, err := url.Parse(raw)
	if err != nil {
		fail(err)
	}
	config := &rest.Config{Host: u.Scheme + "://" + u.Host}
	switch mode {
	case "exec", "attach":
		fs := flag.NewFlagSet(mode, flag.ExitOnError)
		tty := fs.Bool("tty", false, "")
		stdin := fs.Bool("stdin", false, "")
		stderr := fs.Bool("stderr", false, "")
		transport := fs.String("transport", "spdy", "spdy or websocket")
		resize := fs.String("resize", "", "WxH sent once")
		_ = fs.Parse(os.Args[3:])
		var executor remotecommand.Executor
		if *transport == "websocket" {
			executor, err = remotecommand.NewWebSocketExecutor(config, "GET", raw)
		} else {
			executor, err = remotecommand.NewSPDYExecutor(config, "POST", u)
		}
		if err != nil {
			fail(err)
		}
		var out, errOut bytes.Buffer
		opts := remotecommand.StreamOptions{Stdout: &out, Tty: *tty}
		if *stdin {
			opts.Stdin = os.Stdin
		}
		if *stderr {
			opts.Stderr = &errOut
		}
		if *resize != "" {
			w, h, _ := strings.Cut(*resize, "x")
			wi, _ := strconv.Atoi(w)
			hi, _ := strconv.Atoi(h)
			opts.TerminalSizeQueue = &sizes{first: &remotecommand.TerminalSize{Width: uint16(wi), Height: uint16(hi)}}
		}
		r := result{}
		if err := executor.StreamWithContext(context.Background(), opts); err != nil {
			var ee exec.CodeExitError
			if errors.As(err, &ee) {
				r.ExitCode = ee.Code
			} else {
				r.ExitCode = -1
			}
			r.Error = err.Error()
		}
		r.Stdout, r.Stderr = out.String(), errOut.String()
		_ = json.NewEncoder(os.Stdout).Encode(r)
	case "portforward":
		if len(os.Args) < 4 {
			fail(errors.New("portforward needs a remote port"))
		}
		transport, upgrader, err := spdy.RoundTripperFor(config)
		if err != nil {
			fail(err)
		}
		dialer := spdy.NewDialer(upgrader, &http.Client{Transport: transport}, "POST", u)
		stop, ready := make(chan struct{}), make(chan struct{})
		fw, err := portforward.NewOnAddresses(dialer, []string{"127.0.0.1"}, []string{"0:" + os.Args[3]}, stop, ready, io.Discard, os.Stderr)
		if err != nil {
			fail(err)
		}
		done := make(chan error, 1)
		go func() { done <- fw.ForwardPorts() }()
		select {
		case <-ready:
		case err := <-done:
			fail(fmt.Errorf("port-forward ended before it was ready: %v", err))
		}
		ports, err := fw.GetPorts()
		if err != nil {
			fail(err)
		}
		_ = json.NewEncoder(os.Stdout).Encode(map[string]int{"localPort": int(ports[0].Local)})
		_, _ = io.Copy(io.Discard, os.Stdin) // until the test closes our stdin
		close(stop)
		<-done
	default:
		fail(fmt.Errorf("unknown mode %q", mode))
	}
}
