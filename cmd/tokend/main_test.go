package main

import (
	"testing"

	"github.com/tokend/tokend/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }
