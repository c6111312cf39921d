// etcd for the cluster e2e: etcd's own entry point (go.etcd.io/etcd/server/v3/etcdmain), which the
// etcd server module ships as a library; its main package lives in a module of its own.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
