// Command rawsock sends stdin as-is to a Unix socket and prints the first
// line of the answer: tests use it to send malformed requests to the agent
// as the agent's own user.
package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"time"
)

func main() {
	c, err := net.Dial("unix", os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.Copy(c, os.Stdin); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	c.(*net.UnixConn).CloseWrite()
	line, _ := bufio.NewReader(c).ReadString('\n')
	fmt.Print(line)
}
