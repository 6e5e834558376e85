//go:build !race

package extest

const raceBuild = false
