package main

import (
	"fmt"
	"strings"
	"unicode"
)

// Desk is the receptionist's side of one conversation: it answers
// questions about the clinic and books appointments. It is plain logic,
// with no room and no network: each message in, one reply out. A Desk
// serves one caller and is not safe for concurrent use.
type Desk struct {
	clinic  string
	state   deskState
	day     string        // the day being booked, in stateAskTime
	booked  []Appointment // appointments made in this conversation
	goodbye bool          // the caller said goodbye
}

// Appointment is one booking.
type Appointment struct {
	Day  string // "Monday" … "Friday"
	Time string // "morning" or "afternoon"
}

type deskState int

const (
	stateIdle    deskState = iota // answering questions
	stateAskDay                   // booking: which day?
	stateAskTime                  // booking: morning or afternoon?
)

// The clinic's answers.
const (
	answerHours   = "We're open Monday to Friday, 8am to 6pm, and closed at weekends."
	answerAddress = "We're at 12 Harbour Street, on the second floor above the pharmacy."
	answerParking = "There's free parking behind the building; the entrance is on Mill Lane."
	answerPrices  = "A check-up is $60 and a cleaning is $90; we send the bill to your insurer."
	answerHelp    = "I can tell you our opening hours, address, parking and prices, or book you an appointment."
)

// NewDesk returns a desk for the named clinic.
func NewDesk(clinic string) *Desk { return &Desk{clinic: clinic} }

// Greeting is the first thing the caller hears; name may be empty.
func (d *Desk) Greeting(name string) string {
	hello := "Hello"
	if name != "" {
		hello += " " + name
	}
	return fmt.Sprintf("%s, welcome to %s! %s How can I help?", hello, d.clinic, answerHelp)
}

// Booked returns the appointments made so far.
func (d *Desk) Booked() []Appointment { return append([]Appointment(nil), d.booked...) }

// SaidGoodbye reports whether the caller said goodbye.
func (d *Desk) SaidGoodbye() bool { return d.goodbye }

// Reply answers one message from the caller.
func (d *Desk) Reply(text string) string {
	m := parse(text)
	if m.has("bye", "goodbye", "that's all", "that is all") {
		d.state, d.goodbye = stateIdle, true
		return fmt.Sprintf("Goodbye, and thank you for calling %s!", d.clinic)
	}
	if d.state != stateIdle && m.has("cancel", "never mind", "nevermind", "forget it") {
		d.state = stateIdle
		return "No problem, I won't book anything. Anything else?"
	}
	switch d.state {
	case stateAskDay:
		return d.askDay(m)
	case stateAskTime:
		return d.askTime(m)
	}
	switch {
	case m.has("book", "appointment", "schedule", "see the dentist", "see a dentist"):
		d.state = stateAskDay
		if _, ok := m.weekday(); ok { // "book me in on Tuesday"
			return d.askDay(m)
		}
		return "Sure. Which day suits you? We're open Monday to Friday."
	case m.has("parking", "park", "car"):
		return answerParking
	case m.has("price", "prices", "cost", "costs", "how much", "fee", "fees", "insurance"):
		return answerPrices
	case m.has("hours", "open", "opening", "close", "closed", "closing", "when"):
		return answerHours
	case m.has("where", "address", "located", "location", "find you", "directions"):
		return answerAddress
	case m.has("hello", "hi", "hey", "help"):
		return answerHelp
	}
	return "Sorry, I didn't catch that. " + answerHelp
}

func (d *Desk) askDay(m message) string {
	if day, ok := m.weekday(); ok {
		d.state, d.day = stateAskTime, day
		return fmt.Sprintf("Would you like the morning or the afternoon on %s?", day)
	}
	if m.has("saturday", "sunday", "weekend") {
		return "We're closed at weekends, I'm afraid. Which weekday suits you?"
	}
	return "Which day would you like? Monday to Friday, or say cancel."
}

func (d *Desk) askTime(m message) string {
	var slot string
	switch {
	case m.has("afternoon", "after lunch"):
		slot = "afternoon"
	case m.has("morning", "before lunch"):
		slot = "morning"
	default:
		return fmt.Sprintf("Morning or afternoon on %s?", d.day)
	}
	d.booked = append(d.booked, Appointment{Day: d.day, Time: slot})
	d.state = stateIdle
	return fmt.Sprintf("You're booked for %s %s. See you then! Anything else?", d.day, slot)
}

// message is a caller's text, reduced to lower-case words.
type message struct {
	words  map[string]bool
	spaced string // the words, space-separated, with a space at each end
}

func parse(text string) message {
	fields := strings.FieldsFunc(strings.ToLower(text), func(r rune) bool {
		return !unicode.IsLetter(r) && !unicode.IsDigit(r) && r != '\''
	})
	m := message{words: make(map[string]bool, len(fields)), spaced: " " + strings.Join(fields, " ") + " "}
	for _, f := range fields {
		m.words[f] = true
	}
	return m
}

// has reports whether the message has one of the words or phrases.
func (m message) has(keys ...string) bool {
	for _, k := range keys {
		if strings.Contains(k, " ") {
			if strings.Contains(m.spaced, " "+k+" ") {
				return true
			}
		} else if m.words[k] {
			return true
		}
	}
	return false
}

var weekdays = []string{"Monday", "Tuesday", "Wednesday", "Thursday", "Friday"}

// weekday returns the weekday the message names, if any.
func (m message) weekday() (string, bool) {
	for _, d := range weekdays {
		if m.has(strings.ToLower(d)) {
			return d, true
		}
	}
	return "", false
}
